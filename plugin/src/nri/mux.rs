//! NRI's connection multiplexer: one unix socket carries two logical
//! connections, each a byte stream cut into frames of an 8-byte header
//! (connection id, payload length; both big-endian u32) and the payload.
//! Connection 1 carries the plugin's service (the runtime calls it),
//! connection 2 the runtime's service (the plugin calls it). Source of the
//! format: containerd/nri `pkg/net/multiplex` (`mux.go`, `ttrpc.go`).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The plugin's ttrpc service (NRI's `PluginServiceConn`).
pub const PLUGIN_SERVICE: u32 = 1;
/// The runtime's ttrpc service (NRI's `RuntimeServiceConn`).
pub const RUNTIME_SERVICE: u32 = 2;
/// Largest payload NRI sends: a ttrpc header and its 4 MiB message limit.
pub const MAX_PAYLOAD: usize = 10 + (4 << 20);

/// Reads one frame: `(connection id, payload)`; `Ok(None)` at a clean end
/// of the trunk.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u32, Vec<u8>)>> {
    let mut hdr = [0u8; 8];
    match r.read_exact(&mut hdr).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let id = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("NRI frame of {len} bytes on connection {id} exceeds {MAX_PAYLOAD}"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((id, payload)))
}

/// Writes `payload` as one frame on connection `id`.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    id: u32,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8 + payload.len());
    buf.extend_from_slice(&id.to_be_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, RUNTIME_SERVICE, b"hello")
            .await
            .unwrap();
        assert_eq!(&buf[..8], &[0, 0, 0, 2, 0, 0, 0, 5]);
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Some((RUNTIME_SERVICE, b"hello".to_vec()))
        );
        assert_eq!(read_frame(&mut r).await.unwrap(), None);
        let huge = [0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        let e = read_frame(&mut &huge[..]).await.unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
    }
}
