//! A container's network identity: the annotations that give a container a
//! service address of its own, which MOSE keeps across migrations.
//!
//! - `mose.io/network`: the CNI network the container's own network
//!   namespace is attached to, by name (a `<name>.conflist` in the node's
//!   MOSE CNI configuration directory).
//! - `mose.io/address`: its IPv4 address on that network with the prefix
//!   length, e.g. `10.89.0.10/24`. Unique on the network: the operator (or
//!   the CRI, for pods) assigns it, as Kubernetes assigns a pod IP.
//!
//! Both or neither. The interface's MAC address is derived from the address
//! ([`ServiceAddress::mac`]), so that every node gives a migrated container
//! the same one without carrying state: clients' neighbour caches and the
//! overlay's forwarding tables then only learn a new location, never a new
//! owner.

use std::fmt;
use std::net::Ipv4Addr;

/// Annotation naming the CNI network of the container's service address.
pub const NETWORK_ANNOTATION: &str = "mose.io/network";
/// Annotation holding the container's service address (`A.B.C.D/len`).
pub const ADDRESS_ANNOTATION: &str = "mose.io/address";

/// Accepted form of [`NETWORK_ANNOTATION`].
pub const NETWORK_FORM: &str =
    "expected a CNI network name: 1 to 64 characters from a-z, A-Z, 0-9, \
     '-', '_' and '.', starting with a letter or digit";
/// Accepted form of [`ADDRESS_ANNOTATION`].
pub const ADDRESS_FORM: &str = "expected an IPv4 host address with its prefix length, such as \
     10.89.0.10/24 (prefix 8 to 30; not the network's or its broadcast address)";

/// The first two bytes of every MOSE service MAC address: locally
/// administered, unicast (`0x02`), then `m` (`0x6d`) for MOSE.
pub const MAC_PREFIX: [u8; 2] = [0x02, 0x6d];

/// An IPv4 service address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceAddress {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

impl ServiceAddress {
    /// Parses `A.B.C.D/len`; the error says what is wrong with the value.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, len) = s
            .trim()
            .split_once('/')
            .ok_or("the prefix length is missing")?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{:?} is not an IPv4 address", shown(ip)))?;
        let canonical = !len.is_empty()
            && len.bytes().all(|b| b.is_ascii_digit())
            && !(len.len() > 1 && len.starts_with('0'));
        let prefix_len: u8 = len.parse().ok().filter(|_| canonical).ok_or_else(|| {
            format!(
                "{:?} is not a prefix length (8 to 30, no leading zeros)",
                shown(len)
            )
        })?;
        if !(8..=30).contains(&prefix_len) {
            return Err(format!("prefix length {prefix_len} is outside 8..=30"));
        }
        let a = ServiceAddress { ip, prefix_len };
        let host = u32::from(ip) & !a.netmask();
        if host == 0 || host == !a.netmask() {
            return Err(format!("{ip} is the network's or its broadcast address"));
        }
        // 0/8 "this network" (RFC 1122), 240/4 reserved and the limited
        // broadcast (RFC 1112, RFC 919): no host may use them
        let first = ip.octets()[0];
        if ip.is_loopback() || ip.is_multicast() || first == 0 || first >= 240 {
            return Err(format!("{ip} is not a unicast host address"));
        }
        Ok(a)
    }

    fn netmask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    /// The interface's MAC address: [`MAC_PREFIX`] then the four address
    /// bytes (unique on the network because the address is).
    pub fn mac(&self) -> [u8; 6] {
        let o = self.ip.octets();
        [MAC_PREFIX[0], MAC_PREFIX[1], o[0], o[1], o[2], o[3]]
    }

    /// [`Self::mac`] as `02:6d:0a:59:00:0a`.
    pub fn mac_string(&self) -> String {
        self.mac()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A user's value as quoted in an error: at most 64 characters.
pub fn shown(v: &str) -> String {
    const MAX: usize = 64;
    match v.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} characters)", &v[..cut], v.chars().count()),
        None => v.to_string(),
    }
}

impl fmt::Display for ServiceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

/// A container's network identity: its CNI network and service address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkIdentity {
    pub network: String,
    pub address: ServiceAddress,
}

/// A malformed or incomplete network identity in a container's annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityError {
    /// The annotation at fault.
    pub key: &'static str,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "annotation {}: {}", self.key, self.message)
    }
}

impl std::error::Error for IdentityError {}

/// Checks one of the two annotations' value; the error says what is wrong
/// with it (empty when the accepted form, [`NETWORK_FORM`] or
/// [`ADDRESS_FORM`], says it all).
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    match key {
        NETWORK_ANNOTATION => {
            if valid_network(value.trim()) {
                Ok(())
            } else {
                Err(String::new())
            }
        }
        ADDRESS_ANNOTATION => ServiceAddress::parse(value).map(|_| ()),
        _ => Err(format!("{key} is not a network annotation")),
    }
}

/// The accepted form of annotation `key` (one of the two).
pub fn form(key: &str) -> &'static str {
    if key == NETWORK_ANNOTATION {
        NETWORK_FORM
    } else {
        ADDRESS_FORM
    }
}

fn valid_network(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl NetworkIdentity {
    /// The identity the annotations give, `None` when they name none. Both
    /// annotations or neither; each must be well formed.
    pub fn from_annotations<'a, I>(annotations: I) -> Result<Option<Self>, IdentityError>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let (mut network, mut address) = (None, None);
        for (k, v) in annotations {
            match k {
                NETWORK_ANNOTATION => network = Some(v.trim()),
                ADDRESS_ANNOTATION => address = Some(v.trim()),
                _ => {}
            }
        }
        let err = |key, message| IdentityError { key, message };
        match (network, address) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(err(
                ADDRESS_ANNOTATION,
                format!("is missing: {NETWORK_ANNOTATION} needs the container's address too"),
            )),
            (None, Some(_)) => Err(err(
                NETWORK_ANNOTATION,
                format!("is missing: {ADDRESS_ANNOTATION} needs the network it belongs to"),
            )),
            (Some(n), Some(a)) => {
                if !valid_network(n) {
                    return Err(err(
                        NETWORK_ANNOTATION,
                        format!("{:?}: {NETWORK_FORM}", shown(n)),
                    ));
                }
                let address = ServiceAddress::parse(a).map_err(|m| {
                    err(
                        ADDRESS_ANNOTATION,
                        format!("{:?}: {m}; {ADDRESS_FORM}", shown(a)),
                    )
                })?;
                Ok(Some(NetworkIdentity {
                    network: n.to_string(),
                    address,
                }))
            }
        }
    }
}

impl fmt::Display for NetworkIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on network {}", self.address, self.network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pairs: &[(&str, &str)]) -> Result<Option<NetworkIdentity>, IdentityError> {
        NetworkIdentity::from_annotations(pairs.iter().copied())
    }

    #[test]
    fn identity_needs_both_annotations_well_formed() {
        assert_eq!(id(&[("other", "x")]).unwrap(), None);
        let ok = id(&[
            (NETWORK_ANNOTATION, "svc"),
            (ADDRESS_ANNOTATION, " 10.89.0.10/24 "),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(ok.address.to_string(), "10.89.0.10/24");
        assert_eq!(ok.address.mac_string(), "02:6d:0a:59:00:0a");
        let e = id(&[(NETWORK_ANNOTATION, "svc")]).unwrap_err();
        assert_eq!(e.key, ADDRESS_ANNOTATION);
        let e = id(&[(ADDRESS_ANNOTATION, "10.89.0.10/24")]).unwrap_err();
        assert_eq!(e.key, NETWORK_ANNOTATION);
        for bad in [
            "10.89.0.10",
            "10.89.0.10/33",
            "10.89.0.10/31",
            "10.89.0.0/24",
            "10.89.0.255/24",
            "10.89.0/24",
            "127.0.0.5/8",
            "fe80::1/64",
            "10.89.0.10/x",
            "10.89.0.30/024",
            "10.89.0.30/+24",
            "0.0.0.5/24",
            "240.1.2.3/8",
            "255.255.255.253/30",
        ] {
            let e = id(&[(NETWORK_ANNOTATION, "svc"), (ADDRESS_ANNOTATION, bad)]).unwrap_err();
            assert_eq!(e.key, ADDRESS_ANNOTATION, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
        for bad in ["", "-svc", "a b", "svc/1", &"n".repeat(65)] {
            let e = id(&[
                (NETWORK_ANNOTATION, bad),
                (ADDRESS_ANNOTATION, "10.0.0.2/8"),
            ])
            .unwrap_err();
            assert_eq!(e.key, NETWORK_ANNOTATION, "{bad:?}");
        }
    }

    #[test]
    fn long_values_are_quoted_shortened() {
        let long = format!("10.89.0.{}/24", "1".repeat(5000));
        let e = id(&[(NETWORK_ANNOTATION, "svc"), (ADDRESS_ANNOTATION, &long)]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.len() < 400 && text.contains("(5011 characters)"),
            "{text}"
        );
    }

    #[test]
    fn macs_differ_with_the_address() {
        let a = ServiceAddress::parse("10.89.0.10/24").unwrap();
        let b = ServiceAddress::parse("10.89.0.11/24").unwrap();
        assert_ne!(a.mac(), b.mac());
        assert_eq!(a.mac()[0] & 0x03, 0x02, "locally administered unicast");
    }
}
