//! MOSE's NRI plugin (containerd ≥ 1.7 with NRI enabled): containerd's CRI
//! asks it at every CreateContainer, and it refuses a container of a pod
//! under the MOSE runtime handler whose `mose.io/*` annotations (the pod's
//! or its own) are malformed, naming the annotation, before the container
//! exists. Without NRI the shim refuses the same container at
//! StartContainer (containerd's CRI creates the task only then).
//!
//! One session: connect to NRI's socket, register (`Runtime.RegisterPlugin`
//! on the runtime connection), then answer `Configure` (subscribing to
//! CreateContainer), `Synchronize` and `CreateContainer` on the plugin
//! connection until containerd closes it or says `Shutdown`.

pub mod api;
pub mod mux;
pub mod ttrpc;

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{bail, Context, Result};
use prost::Message as _;
use tokio::net::UnixStream;
use tracing::{debug, info, warn};

use ttrpc::{Message, Request, Response, Status, Stream};

/// What the plugin registers as and judges.
#[derive(Debug, Clone)]
pub struct NriConfig {
    /// NRI's socket (containerd's `io.containerd.nri.v1.nri` `socket_path`).
    pub socket: PathBuf,
    /// Name and two-digit index the plugin registers with (NRI calls
    /// plugins in index order).
    pub name: String,
    pub index: String,
    /// The CRI runtime handler of MOSE's runtime class: pods under other
    /// handlers are not judged (NRI before 0.7 does not say the handler,
    /// and then every pod is).
    pub handler: String,
}

/// How a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// containerd said `Shutdown`.
    Shutdown,
    /// containerd closed the connection.
    Closed,
}

/// Runs one session on NRI's socket.
pub async fn run_session(cfg: &NriConfig) -> Result<Ended> {
    let s = UnixStream::connect(&cfg.socket).await.with_context(|| {
        format!(
            "connecting to NRI at {} (is containerd ≥ 1.7 running with NRI enabled: \
             [plugins.\"io.containerd.nri.v1.nri\"] disable = false?)",
            cfg.socket.display()
        )
    })?;
    let (mut r, mut w) = s.into_split();
    let register = Request {
        service: api::RUNTIME_SERVICE.into(),
        method: "RegisterPlugin".into(),
        payload: api::RegisterPluginRequest {
            plugin_name: cfg.name.clone(),
            plugin_idx: cfg.index.clone(),
        }
        .encode_to_vec(),
        timeout_nano: 0,
    };
    let m = Message {
        stream: 1,
        kind: ttrpc::REQUEST,
        body: register.encode_to_vec(),
    };
    mux::write_frame(&mut w, mux::RUNTIME_SERVICE, &m.encode()).await?;
    let (mut plugin_side, mut runtime_side) = (Stream::default(), Stream::default());
    loop {
        let Some((conn, payload)) = mux::read_frame(&mut r).await? else {
            return Ok(Ended::Closed);
        };
        match conn {
            mux::PLUGIN_SERVICE => {
                plugin_side.push(&payload);
                while let Some(m) = plugin_side.next_message() {
                    let (reply, shutdown) = answer(cfg, &m)?;
                    if let Some(reply) = reply {
                        mux::write_frame(&mut w, mux::PLUGIN_SERVICE, &reply.encode()).await?;
                    }
                    if shutdown {
                        return Ok(Ended::Shutdown);
                    }
                }
            }
            mux::RUNTIME_SERVICE => {
                runtime_side.push(&payload);
                while let Some(m) = runtime_side.next_message() {
                    registered(cfg, &m)?;
                }
            }
            other => debug!(conn = other, "NRI frame on an unknown connection ignored"),
        }
    }
}

/// The runtime's answer to the registration.
fn registered(cfg: &NriConfig, m: &Message) -> Result<()> {
    let r = Response::decode(&m.body[..]).context("NRI's answer to RegisterPlugin")?;
    match r.status {
        Some(s) if s.code != 0 => bail!(
            "containerd refused to register NRI plugin {}-{}: {}",
            cfg.index,
            cfg.name,
            s.message
        ),
        _ => {
            info!(name = %cfg.name, index = %cfg.index, "registered with NRI");
            Ok(())
        }
    }
}

/// The response to one request of the runtime, and whether it was
/// `Shutdown`.
fn answer(cfg: &NriConfig, m: &Message) -> Result<(Option<Message>, bool)> {
    if m.kind != ttrpc::REQUEST {
        return Ok((None, false));
    }
    let req = Request::decode(&m.body[..]).context("an NRI request")?;
    let (status, payload) = match (req.service.as_str(), req.method.as_str()) {
        (api::PLUGIN_SERVICE, "Configure") => {
            let c = api::ConfigureRequest::decode(&req.payload[..]).unwrap_or_default();
            info!(runtime = %c.runtime_name, version = %c.runtime_version, "NRI configured the plugin");
            let events = 1 << (api::EVENT_CREATE_CONTAINER - 1);
            (ok(), api::ConfigureResponse { events }.encode_to_vec())
        }
        (api::PLUGIN_SERVICE, "CreateContainer") => {
            match api::CreateContainerRequest::decode(&req.payload[..])
                .map_err(|e| format!("MOSE's NRI plugin cannot read the request: {e}"))
                .and_then(|c| judge(cfg, &c))
            {
                Ok(()) => (ok(), Vec::new()),
                Err(why) => {
                    warn!(reason = %why, "container refused at CreateContainer");
                    (failed(ttrpc::INVALID_ARGUMENT, why), Vec::new())
                }
            }
        }
        (api::PLUGIN_SERVICE, "Shutdown") => {
            let reply = response(m.stream, ok(), Vec::new());
            return Ok((Some(reply), true));
        }
        // Synchronize (no updates asked) and any event it did not subscribe to
        (api::PLUGIN_SERVICE, _) => (ok(), Vec::new()),
        (service, method) => (
            failed(
                ttrpc::UNIMPLEMENTED,
                format!("MOSE's NRI plugin does not serve {service}/{method}"),
            ),
            Vec::new(),
        ),
    };
    Ok((Some(response(m.stream, status, payload)), false))
}

fn ok() -> Status {
    Status {
        code: 0,
        message: String::new(),
    }
}

fn failed(code: i32, message: String) -> Status {
    Status { code, message }
}

fn response(stream: u32, status: Status, payload: Vec<u8>) -> Message {
    Message {
        stream,
        kind: ttrpc::RESPONSE,
        body: Response {
            status: Some(status),
            payload,
        }
        .encode_to_vec(),
    }
}

/// Refuses a container of a MOSE pod whose `mose.io/*` annotations, the
/// pod's then the container's own (which win), do not parse.
pub fn judge(cfg: &NriConfig, req: &api::CreateContainerRequest) -> Result<(), String> {
    let pod = req.pod.clone().unwrap_or_default();
    if !pod.runtime_handler.is_empty() && pod.runtime_handler != cfg.handler {
        return Ok(());
    }
    let container = req.container.clone().unwrap_or_default();
    let mut all: BTreeMap<String, String> = pod.annotations.into_iter().collect();
    all.extend(container.annotations);
    mose_policy::annotations::parse(&all)
        .map(|_| ())
        .map_err(|e| {
            format!(
                "MOSE refuses container {:?} of pod {}/{}: {e}",
                container.name, pod.namespace, pod.name
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NriConfig {
        NriConfig {
            socket: "/nonexistent".into(),
            name: "mose".into(),
            index: "10".into(),
            handler: "mose".into(),
        }
    }

    fn create(
        handler: &str,
        pod: &[(&str, &str)],
        ctr: &[(&str, &str)],
    ) -> api::CreateContainerRequest {
        let map = |a: &[(&str, &str)]| {
            a.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        api::CreateContainerRequest {
            pod: Some(api::PodSandbox {
                id: "sb".into(),
                name: "tracker".into(),
                namespace: "default".into(),
                annotations: map(pod),
                runtime_handler: handler.into(),
            }),
            container: Some(api::Container {
                id: "c".into(),
                name: "state".into(),
                annotations: map(ctr),
            }),
        }
    }

    #[test]
    fn malformed_annotations_of_mose_pods_are_refused_with_their_name() {
        let bad = [("mose.io/max-downtime", "soon")];
        for (pod, ctr) in [(&bad[..], &[][..]), (&[][..], &bad[..])] {
            let e = judge(&cfg(), &create("mose", pod, ctr)).unwrap_err();
            assert!(
                e.contains("mose.io/max-downtime") && e.contains("default/tracker"),
                "{e}"
            );
        }
        // the handler is not said by older NRI: judged too
        assert!(judge(&cfg(), &create("", &bad, &[])).is_err());
        // not MOSE's pod
        judge(&cfg(), &create("runc", &bad, &[])).unwrap();
        judge(
            &cfg(),
            &create("mose", &[("mose.io/max-downtime", "200ms")], &[]),
        )
        .unwrap();
    }

    #[test]
    fn create_container_is_answered_with_the_refusal_and_shutdown_ends_the_session() {
        let req = Request {
            service: api::PLUGIN_SERVICE.into(),
            method: "CreateContainer".into(),
            payload: create("mose", &[("mose.io/technique", "warp")], &[]).encode_to_vec(),
            timeout_nano: 0,
        };
        let m = Message {
            stream: 3,
            kind: ttrpc::REQUEST,
            body: req.encode_to_vec(),
        };
        let (reply, end) = answer(&cfg(), &m).unwrap();
        let reply = reply.unwrap();
        assert_eq!((reply.stream, reply.kind, end), (3, ttrpc::RESPONSE, false));
        let r = Response::decode(&reply.body[..]).unwrap();
        let s = r.status.unwrap();
        assert_eq!(s.code, ttrpc::INVALID_ARGUMENT);
        assert!(s.message.contains("mose.io/technique"), "{}", s.message);
        let shut = Message {
            stream: 5,
            kind: ttrpc::REQUEST,
            body: Request {
                service: api::PLUGIN_SERVICE.into(),
                method: "Shutdown".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        };
        assert!(answer(&cfg(), &shut).unwrap().1);
    }
}
