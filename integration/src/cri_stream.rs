//! The client side of the CRI's streaming server (the URLs `Exec` and
//! `Attach` answer), as `kubectl exec` speaks it over WebSocket: the
//! subprotocol `v4.channel.k8s.io` (Kubernetes' remotecommand protocol),
//! each binary message prefixed by its channel: 0 stdin, 1 stdout,
//! 2 stderr, 3 the final status (a JSON `metav1.Status`), 4 resize.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tungstenite::{client::IntoClientRequest, Message};

/// The subprotocol asked for.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// What came back on the channels.
#[derive(Debug, Clone, Default)]
pub struct StreamOutput {
    pub stdout: String,
    pub stderr: String,
    /// The final status (channel 3), when the server sent one.
    pub status: Option<serde_json::Value>,
}

impl StreamOutput {
    /// The exit code the status reports: 0 on `Success`, the `ExitCode`
    /// cause otherwise; `None` without a status.
    pub fn exit_code(&self) -> Option<i32> {
        let s = self.status.as_ref()?;
        if s["status"] == "Success" {
            return Some(0);
        }
        s["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")?["message"]
            .as_str()?
            .parse()
            .ok()
    }
}

/// Opens `url` and collects the streams until the server closes, or until
/// `until` holds for the output so far, or `timeout` passes (an error).
pub fn collect(
    url: &str,
    timeout: Duration,
    until: impl Fn(&StreamOutput) -> bool,
) -> Result<StreamOutput> {
    // the CRI answers http:// URLs; the same server upgrades to WebSocket
    let Some(rest) = url.strip_prefix("http://") else {
        bail!(
            "streaming URL {url}: only plain http:// (the testbed's loopback server) is supported"
        );
    };
    let mut req = format!("ws://{rest}")
        .into_client_request()
        .with_context(|| format!("streaming URL {url}"))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        PROTOCOL.parse().context("subprotocol header")?,
    );
    let (mut ws, resp) = tungstenite::connect(req).with_context(|| format!("opening {url}"))?;
    let agreed = resp.headers().get("Sec-WebSocket-Protocol").cloned();
    if agreed.as_ref().and_then(|v| v.to_str().ok()) != Some(PROTOCOL) {
        bail!("the streaming server did not agree to {PROTOCOL} (answered {agreed:?})");
    }
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .context("setting the stream's read timeout")?;
    }
    let deadline = Instant::now() + timeout;
    let mut out = StreamOutput::default();
    loop {
        if until(&out) {
            let _ = ws.close(None);
            return Ok(out);
        }
        if Instant::now() > deadline {
            bail!("{url}: no end within {timeout:?}; so far {out:?}");
        }
        match ws.read() {
            Ok(Message::Binary(b)) => add(&mut out, &b)?,
            Ok(Message::Close(_)) => return Ok(out),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(out)
            }
            Err(e) => return Err(e).with_context(|| format!("reading {url}")),
        }
    }
}

/// Adds one channel message (the first byte names the channel; a message
/// of the channel byte alone opens it).
fn add(out: &mut StreamOutput, msg: &[u8]) -> Result<()> {
    let Some((&channel, data)) = msg.split_first() else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(data);
    match channel {
        1 => out.stdout.push_str(&text),
        2 => out.stderr.push_str(&text),
        3 if !data.is_empty() => {
            out.status = Some(serde_json::from_slice(data).context("the status channel's JSON")?)
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_the_exit_code_are_read() {
        let mut o = StreamOutput::default();
        for m in [&b"\x01"[..], b"\x01out\n", b"\x02err\n", b"\x03"] {
            add(&mut o, m).unwrap();
        }
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("out\n", "err\n"));
        assert_eq!(o.exit_code(), None);
        let status = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"7"}]}}"#;
        add(&mut o, &[&[3u8][..], status].concat()).unwrap();
        assert_eq!(o.exit_code(), Some(7));
        add(&mut o, b"\x03{\"status\":\"Success\"}").unwrap();
        assert_eq!(o.exit_code(), Some(0));
        assert!(add(&mut o, b"\x03not json").is_err());
    }
}
