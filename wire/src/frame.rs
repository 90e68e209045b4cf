//! Framing: `[kind u8][flags u8][reserved u16][len u32][xxh3-64 of payload u64][payload]`.
//!
//! The checksum catches corruption that slipped past the transport; a stream
//! that ends inside a frame is reported as truncated, never taken as complete.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use xxhash_rust::xxh3::xxh3_64;

use crate::{blocks::BlockHash, message::Message, BLOCK_SIZE};

/// Largest payload a frame may carry (after decompression too).
pub const MAX_PAYLOAD: usize = 32 << 20;
const HEADER: usize = 16;
const FLAG_LZ4: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON [`Message`].
    Control = 1,
    /// Page blocks: `[hash u128 LE][4096 bytes]` repeated.
    Blocks = 2,
    /// A chunk of the file announced by the last `FileBegin`.
    FileData = 3,
    /// A pages image as block hashes: `[name len u16][name][hash u128 LE]...`.
    Manifest = 4,
    /// Lazy pages of one process, contiguous from `vaddr`:
    /// `[pid u32][vaddr u64][n u32][hash u128 LE]×n` then 4096 bytes for each
    /// page whose hash is not the zero page's.
    Pages = 5,
    /// Lazy pages of one process, contiguous from `vaddr`, whose content the
    /// destination already holds (blocks pre-copy rounds brought, or zero
    /// pages): `[pid u32][vaddr u64][n u32][hash u128 LE]×n`, no data.
    PagesHeld = 6,
}

/// A run of lazy pages named by their blocks only, as a
/// [`FrameKind::PagesHeld`] frame carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRun {
    /// The process as numbered in the checkpoint.
    pub pid: u32,
    pub vaddr: u64,
    /// One hash per page, each a block the destination holds.
    pub hashes: Vec<BlockHash>,
}

/// Manifest slot of a page that stays on the source until after the restore
/// (post-copy): its content is not known, nor needed, at the freeze.
pub const LAZY_SLOT: BlockHash = u128::MAX;

/// A run of lazy pages of one process, as a [`FrameKind::Pages`] frame carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRun {
    /// The process as numbered in the checkpoint.
    pub pid: u32,
    pub vaddr: u64,
    /// One hash per page; a zero page's hash means no data travelled.
    pub hashes: Vec<BlockHash>,
    /// The pages' content, zero pages included (as zeros).
    pub data: Vec<u8>,
}

impl FrameKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Control,
            2 => Self::Blocks,
            3 => Self::FileData,
            4 => Self::Manifest,
            5 => Self::Pages,
            6 => Self::PagesHeld,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("stream truncated inside a frame ({0})")]
    Truncated(&'static str),
    #[error("corrupt frame: payload checksum {actual:016x} != {expected:016x}")]
    Checksum { expected: u64, actual: u64 },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("I/O error on the migration stream: {0}")]
    Io(#[from] std::io::Error),
}

/// One received frame.
pub struct Frame {
    pub kind: FrameKind,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn message(&self) -> Result<Message, WireError> {
        if self.kind != FrameKind::Control {
            return Err(WireError::Malformed(format!(
                "expected a control message, got {:?}",
                self.kind
            )));
        }
        serde_json::from_slice(&self.payload)
            .map_err(|e| WireError::Malformed(format!("bad control message: {e}")))
    }

    /// Iterates the (hash, content) pairs of a Blocks frame.
    pub fn blocks(&self) -> Result<Vec<(BlockHash, &[u8])>, WireError> {
        const ENTRY: usize = 16 + BLOCK_SIZE;
        if self.kind != FrameKind::Blocks || !self.payload.len().is_multiple_of(ENTRY) {
            return Err(WireError::Malformed("blocks frame of bad size".into()));
        }
        Ok(self
            .payload
            .chunks(ENTRY)
            .map(|c| {
                let mut h = [0u8; 16];
                h.copy_from_slice(&c[..16]);
                (u128::from_le_bytes(h), &c[16..])
            })
            .collect())
    }

    /// The header and hashes shared by Pages and PagesHeld frames: (pid,
    /// vaddr, hashes, where the data begins).
    fn page_header(&self, kind: FrameKind) -> Result<(u32, u64, Vec<BlockHash>, usize), WireError> {
        let p = &self.payload;
        if self.kind != kind || p.len() < 16 {
            return Err(WireError::Malformed(format!("bad {kind:?} frame")));
        }
        let pid = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        let mut v = [0u8; 8];
        v.copy_from_slice(&p[4..12]);
        let vaddr = u64::from_le_bytes(v);
        let n = u32::from_le_bytes([p[12], p[13], p[14], p[15]]) as usize;
        let hashes_end = n.checked_mul(16).and_then(|b| b.checked_add(16));
        match hashes_end {
            Some(end) if p.len() >= end && n > 0 && vaddr.is_multiple_of(BLOCK_SIZE as u64) => {
                Ok((pid, vaddr, decode_hashes(&p[16..end]), end))
            }
            _ => Err(WireError::Malformed(format!(
                "{kind:?} frame for pid {pid} at {vaddr:#x}: bad header ({n} pages, {} bytes)",
                p.len()
            ))),
        }
    }

    /// Decodes a PagesHeld frame: pages named by blocks the destination holds.
    pub fn held_pages(&self) -> Result<HeldRun, WireError> {
        let (pid, vaddr, hashes, end) = self.page_header(FrameKind::PagesHeld)?;
        if self.payload.len() != end {
            return Err(WireError::Malformed(format!(
                "PagesHeld frame for pid {pid} at {vaddr:#x}: {} bytes after its hashes",
                self.payload.len() - end
            )));
        }
        Ok(HeldRun { pid, vaddr, hashes })
    }

    /// Decodes a Pages frame, checking every page against its hash: a page
    /// that does not match is corrupt, never placed.
    pub fn pages(&self) -> Result<PageRun, WireError> {
        let (pid, vaddr, hashes, hashes_end) = self.page_header(FrameKind::Pages)?;
        let p = &self.payload;
        let n = hashes.len();
        let zero = crate::blocks::zero_hash();
        let carried = hashes.iter().filter(|h| **h != zero).count();
        if p.len() != hashes_end + carried * BLOCK_SIZE {
            return Err(WireError::Malformed(format!(
                "pages frame for pid {pid} at {vaddr:#x}: {} bytes of data for {carried} pages",
                p.len() - hashes_end
            )));
        }
        let mut data = vec![0u8; n * BLOCK_SIZE];
        let mut src = &p[hashes_end..];
        for (i, h) in hashes.iter().enumerate() {
            if *h == zero {
                continue;
            }
            let page = &src[..BLOCK_SIZE];
            let got = crate::blocks::hash_block(page);
            if got != *h {
                return Err(WireError::Malformed(format!(
                    "corrupt page: pid {pid} page {:#x} hashes to {got:032x}, not {h:032x}",
                    vaddr + (i * BLOCK_SIZE) as u64
                )));
            }
            data[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE].copy_from_slice(page);
            src = &src[BLOCK_SIZE..];
        }
        Ok(PageRun {
            pid,
            vaddr,
            hashes,
            data,
        })
    }

    /// Name and block hashes of a Manifest frame.
    pub fn manifest(&self) -> Result<(String, Vec<BlockHash>), WireError> {
        let p = &self.payload;
        if self.kind != FrameKind::Manifest || p.len() < 2 {
            return Err(WireError::Malformed("bad manifest frame".into()));
        }
        let n = u16::from_le_bytes([p[0], p[1]]) as usize;
        if p.len() < 2 + n || !(p.len() - 2 - n).is_multiple_of(16) {
            return Err(WireError::Malformed("bad manifest frame length".into()));
        }
        let name = String::from_utf8(p[2..2 + n].to_vec())
            .map_err(|_| WireError::Malformed("manifest name is not UTF-8".into()))?;
        let hashes = decode_hashes(&p[2 + n..]);
        Ok((name, hashes))
    }
}

/// Block hashes as frames carry them: u128 little-endian, back to back
/// (callers check the length is a multiple of 16).
fn decode_hashes(b: &[u8]) -> Vec<BlockHash> {
    b.chunks_exact(16)
        .map(|c| {
            let mut h = [0u8; 16];
            h.copy_from_slice(c);
            u128::from_le_bytes(h)
        })
        .collect()
}

/// Reads frames, verifying each checksum.
pub struct FrameReader<R> {
    inner: R,
    bytes: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, bytes: 0 }
    }

    /// Bytes read from the wire so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub async fn next(&mut self) -> Result<Frame, WireError> {
        let mut h = [0u8; HEADER];
        match self.inner.read_exact(&mut h[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(WireError::Closed)
            }
            Err(e) => return Err(e.into()),
        }
        self.inner
            .read_exact(&mut h[1..])
            .await
            .map_err(|e| eof_as(e, "header"))?;
        let kind = FrameKind::from_u8(h[0])
            .ok_or_else(|| WireError::Malformed(format!("unknown frame kind {}", h[0])))?;
        let flags = h[1];
        // the header is not under the checksum: what a sender never sets is
        // refused, so a damaged header cannot pass as a different frame
        if flags & !FLAG_LZ4 != 0 || h[2] != 0 || h[3] != 0 {
            return Err(WireError::Malformed(format!(
                "frame header with unknown flags {flags:#04x} or reserved bytes {:#04x}{:02x}",
                h[3], h[2]
            )));
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
        let expected = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        if len > MAX_PAYLOAD {
            return Err(WireError::TooLarge(len));
        }
        let mut payload = vec![0u8; len];
        self.inner
            .read_exact(&mut payload)
            .await
            .map_err(|e| eof_as(e, "payload"))?;
        self.bytes += (HEADER + len) as u64;
        let actual = xxh3_64(&payload);
        if actual != expected {
            return Err(WireError::Checksum { expected, actual });
        }
        if flags & FLAG_LZ4 != 0 {
            payload = lz4_flex::decompress_size_prepended(&payload)
                .map_err(|e| WireError::Malformed(format!("lz4: {e}")))?;
            if payload.len() > MAX_PAYLOAD {
                return Err(WireError::TooLarge(payload.len()));
            }
        }
        Ok(Frame { kind, payload })
    }

    /// Reads the next frame and requires it to be a control message.
    pub async fn message(&mut self) -> Result<Message, WireError> {
        self.next().await?.message()
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

fn eof_as(e: std::io::Error, what: &'static str) -> WireError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        WireError::Truncated(what)
    } else {
        WireError::Io(e)
    }
}

/// Writes frames; optionally lz4-compresses bulk payloads.
pub struct FrameWriter<W> {
    inner: W,
    bytes: u64,
    compress: bool,
    corrupt_next_bulk: bool,
    pacer: Option<Pacer>,
}

/// Keeps the average sending rate under a cap (`mose.io/max-bandwidth`):
/// after each frame it sleeps until the bytes sent in the current window
/// fit the rate. A pause longer than [`Pacer::IDLE`] starts a new window, so
/// idle time is not saved up into a burst.
struct Pacer {
    bytes_per_s: f64,
    window: std::time::Instant,
    sent: u64,
    last: std::time::Instant,
}

impl Pacer {
    const IDLE: std::time::Duration = std::time::Duration::from_millis(250);

    fn new(bytes_per_s: u64) -> Self {
        let now = std::time::Instant::now();
        Self {
            bytes_per_s: bytes_per_s.max(1) as f64,
            window: now,
            sent: 0,
            last: now,
        }
    }

    /// How long to wait after sending `n` more bytes.
    fn delay(&mut self, n: u64) -> std::time::Duration {
        let now = std::time::Instant::now();
        if now.duration_since(self.last) > Self::IDLE {
            self.window = now;
            self.sent = 0;
        }
        self.sent += n;
        self.last = now;
        let due = std::time::Duration::from_secs_f64(self.sent as f64 / self.bytes_per_s);
        due.saturating_sub(now.duration_since(self.window))
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            bytes: 0,
            compress: false,
            corrupt_next_bulk: false,
            pacer: None,
        }
    }

    /// Caps the sending rate at `bytes_per_s` (None: as fast as the link goes).
    pub fn set_rate_limit(&mut self, bytes_per_s: Option<u64>) {
        self.pacer = bytes_per_s.map(Pacer::new);
    }

    /// Compress bulk frames (worth it when the link, not the CPU, is the bottleneck).
    pub fn set_compression(&mut self, on: bool) {
        self.compress = on;
    }

    /// Test hook: flips one byte of the next bulk frame after its checksum is
    /// computed, as a faulty link would.
    pub fn inject_corruption(&mut self) {
        self.corrupt_next_bulk = true;
    }

    /// Bytes written to the wire so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    async fn write(
        &mut self,
        kind: FrameKind,
        payload: &[u8],
        bulk: bool,
    ) -> Result<(), WireError> {
        let compressed;
        let (flags, body) = if bulk && self.compress {
            compressed = lz4_flex::compress_prepend_size(payload);
            (FLAG_LZ4, &compressed[..])
        } else {
            (0, payload)
        };
        if body.len() > MAX_PAYLOAD {
            return Err(WireError::TooLarge(body.len()));
        }
        let mut h = [0u8; HEADER];
        h[0] = kind as u8;
        h[1] = flags;
        h[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&xxh3_64(body).to_le_bytes());
        self.inner.write_all(&h).await?;
        if bulk && self.corrupt_next_bulk && !body.is_empty() {
            self.corrupt_next_bulk = false;
            let mut bad = body.to_vec();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x5a;
            self.inner.write_all(&bad).await?;
        } else {
            self.inner.write_all(body).await?;
        }
        self.bytes += (HEADER + body.len()) as u64;
        if let Some(p) = self.pacer.as_mut() {
            // every byte counts against the cap, but only bulk frames wait:
            // a control message (hello, begin, commit) is never held back
            // by a tiny cap, the next bulk frame makes up for it
            let wait = p.delay((HEADER + body.len()) as u64);
            if bulk && !wait.is_zero() {
                self.inner.flush().await?;
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    pub async fn message(&mut self, m: &Message) -> Result<(), WireError> {
        let body = serde_json::to_vec(m).map_err(|e| WireError::Malformed(e.to_string()))?;
        self.write(FrameKind::Control, &body, false).await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Sends page blocks (each exactly [`BLOCK_SIZE`] bytes).
    pub async fn blocks(&mut self, blocks: &[(BlockHash, &[u8])]) -> Result<(), WireError> {
        let mut body = Vec::with_capacity(blocks.len() * (16 + BLOCK_SIZE));
        for (h, d) in blocks {
            if d.len() != BLOCK_SIZE {
                return Err(WireError::Malformed(format!("block of {} bytes", d.len())));
            }
            body.extend_from_slice(&h.to_le_bytes());
            body.extend_from_slice(d);
        }
        self.write(FrameKind::Blocks, &body, true).await
    }

    pub async fn file_data(&mut self, chunk: &[u8]) -> Result<(), WireError> {
        self.write(FrameKind::FileData, chunk, true).await
    }

    pub async fn manifest(&mut self, name: &str, hashes: &[BlockHash]) -> Result<(), WireError> {
        let mut body = Vec::with_capacity(2 + name.len() + hashes.len() * 16);
        body.extend_from_slice(&(name.len() as u16).to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        for h in hashes {
            body.extend_from_slice(&h.to_le_bytes());
        }
        self.write(FrameKind::Manifest, &body, true).await
    }

    /// Sends a run of lazy pages (`data` holds `hashes.len()` pages); zero
    /// pages travel as their hash only.
    pub async fn pages(
        &mut self,
        pid: u32,
        vaddr: u64,
        hashes: &[BlockHash],
        data: &[u8],
    ) -> Result<(), WireError> {
        if data.len() != hashes.len() * BLOCK_SIZE || hashes.is_empty() {
            return Err(WireError::Malformed(format!(
                "{} bytes for {} pages",
                data.len(),
                hashes.len()
            )));
        }
        let zero = crate::blocks::zero_hash();
        let mut body = Vec::with_capacity(16 + hashes.len() * (16 + BLOCK_SIZE));
        body.extend_from_slice(&pid.to_le_bytes());
        body.extend_from_slice(&vaddr.to_le_bytes());
        body.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
        for h in hashes {
            body.extend_from_slice(&h.to_le_bytes());
        }
        for (h, page) in hashes.iter().zip(data.chunks(BLOCK_SIZE)) {
            if *h != zero {
                body.extend_from_slice(page);
            }
        }
        self.write(FrameKind::Pages, &body, true).await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// Sends a run of lazy pages the destination holds, by their blocks.
    pub async fn pages_held(
        &mut self,
        pid: u32,
        vaddr: u64,
        hashes: &[BlockHash],
    ) -> Result<(), WireError> {
        if hashes.is_empty() {
            return Err(WireError::Malformed("a held run of no pages".into()));
        }
        let mut body = Vec::with_capacity(16 + hashes.len() * 16);
        body.extend_from_slice(&pid.to_le_bytes());
        body.extend_from_slice(&vaddr.to_le_bytes());
        body.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
        for h in hashes {
            body.extend_from_slice(&h.to_le_bytes());
        }
        self.write(FrameKind::PagesHeld, &body, true).await
    }

    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.inner.flush().await?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::hash_block;

    #[tokio::test]
    async fn pages_roundtrip_skip_zero_data_and_reject_a_wrong_page() {
        let a = vec![3u8; BLOCK_SIZE];
        let z = vec![0u8; BLOCK_SIZE];
        let mut data = a.clone();
        data.extend_from_slice(&z);
        let hashes = [hash_block(&a), hash_block(&z)];
        let mut buf = Vec::new();
        FrameWriter::new(&mut buf)
            .pages(7, 0x7000, &hashes, &data)
            .await
            .unwrap();
        // the zero page's 4096 bytes did not travel
        assert_eq!(buf.len(), HEADER + 16 + 32 + BLOCK_SIZE);
        let f = FrameReader::new(&buf[..]).next().await.unwrap();
        let run = f.pages().unwrap();
        assert_eq!((run.pid, run.vaddr, run.data), (7, 0x7000, data.clone()));

        // a page whose content does not match its hash is refused
        let bad = [hash_block(&z), hash_block(&z) ^ 1];
        let mut buf = Vec::new();
        FrameWriter::new(&mut buf)
            .pages(7, 0x7000, &bad, &data)
            .await
            .unwrap();
        let e = FrameReader::new(&buf[..])
            .next()
            .await
            .unwrap()
            .pages()
            .unwrap_err();
        assert!(e.to_string().contains("corrupt page"), "{e}");
    }

    #[tokio::test]
    async fn held_pages_carry_hashes_only_and_are_not_pages() {
        let hashes = [hash_block(&[5u8; BLOCK_SIZE]), crate::blocks::zero_hash()];
        let mut buf = Vec::new();
        FrameWriter::new(&mut buf)
            .pages_held(9, 0x9000, &hashes)
            .await
            .unwrap();
        assert_eq!(buf.len(), HEADER + 16 + 32);
        let f = FrameReader::new(&buf[..]).next().await.unwrap();
        let run = f.held_pages().unwrap();
        assert_eq!(
            (run.pid, run.vaddr, run.hashes),
            (9, 0x9000, hashes.to_vec())
        );
        // the kinds do not mix: a held run is no page data
        assert!(f.pages().is_err());
        // a header naming more hashes than the frame holds is refused
        let mut short = FrameReader::new(&buf[..]).next().await.unwrap();
        short.payload.truncate(16 + 16);
        let e = short.held_pages().unwrap_err();
        assert!(e.to_string().contains("bad header"), "{e}");
    }

    #[tokio::test]
    async fn roundtrip_and_integrity() {
        let mut buf = Vec::new();
        {
            let mut w = FrameWriter::new(&mut buf);
            w.message(&Message::Ack).await.unwrap();
            let b = vec![7u8; BLOCK_SIZE];
            w.set_compression(true);
            w.blocks(&[(hash_block(&b), &b)]).await.unwrap();
            w.manifest("pages-1.img", &[1, 2]).await.unwrap();
        }
        let mut r = FrameReader::new(&buf[..]);
        assert!(matches!(r.message().await.unwrap(), Message::Ack));
        let f = r.next().await.unwrap();
        let blocks = f.blocks().unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].1, &[7u8; BLOCK_SIZE][..]);
        let (name, hashes) = r.next().await.unwrap().manifest().unwrap();
        assert_eq!((name.as_str(), hashes), ("pages-1.img", vec![1, 2]));
        assert!(matches!(r.next().await, Err(WireError::Closed)));

        // truncated inside a frame
        let mut r = FrameReader::new(&buf[..buf.len() - 3]);
        r.next().await.unwrap();
        r.next().await.unwrap();
        assert!(matches!(r.next().await, Err(WireError::Truncated(_))));
    }

    #[test]
    fn pacer_spreads_bytes_over_time_and_forgets_idle_time() {
        let mut p = Pacer::new(1_000_000);
        let d = p.delay(500_000);
        assert!(
            d > std::time::Duration::from_millis(450) && d <= std::time::Duration::from_millis(500),
            "{d:?}"
        );
        // the window keeps counting: another 500 KB is due at 1 s
        let d = p.delay(500_000);
        assert!(d > std::time::Duration::from_millis(950), "{d:?}");
        // after an idle pause a new window starts (no saved-up burst, no debt)
        p.last -= Pacer::IDLE * 2;
        let d = p.delay(100_000);
        assert!(d <= std::time::Duration::from_millis(100), "{d:?}");
    }

    #[tokio::test]
    async fn rate_limited_writer_takes_as_long_as_the_cap_says() {
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf);
        w.set_rate_limit(Some(4 * 1024 * 1024));
        let b = vec![3u8; BLOCK_SIZE];
        let blocks: Vec<(BlockHash, &[u8])> = (0..64).map(|_| (hash_block(&b), &b[..])).collect();
        let t = std::time::Instant::now();
        for _ in 0..4 {
            w.blocks(&blocks).await.unwrap();
        }
        // 1 MiB at 4 MiB/s: at least ~250 ms (a lower bound only; never an upper one)
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(240),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn control_messages_are_not_held_back_by_the_cap() {
        let mut buf = Vec::new();
        let mut w = FrameWriter::new(&mut buf);
        w.set_rate_limit(Some(1));
        let t = tokio::time::Instant::now();
        w.message(&Message::Abort {
            reason: "x".repeat(100),
        })
        .await
        .unwrap();
        // the clock is paused: any sleep would have advanced it by ~100 s
        assert_eq!(t.elapsed(), std::time::Duration::ZERO);
        let b = vec![3u8; BLOCK_SIZE];
        w.blocks(&[(hash_block(&b), &b[..])]).await.unwrap();
        assert!(
            t.elapsed() >= std::time::Duration::from_secs(4096),
            "bulk frames wait"
        );
    }

    #[tokio::test]
    async fn corruption_is_detected() {
        let mut buf = Vec::new();
        {
            let mut w = FrameWriter::new(&mut buf);
            w.inject_corruption();
            let b = vec![9u8; BLOCK_SIZE];
            w.blocks(&[(hash_block(&b), &b)]).await.unwrap();
        }
        let mut r = FrameReader::new(&buf[..]);
        assert!(matches!(r.next().await, Err(WireError::Checksum { .. })));
    }

    #[tokio::test]
    async fn garbage_is_rejected_not_panicking() {
        let junk = [0xffu8; 40];
        let mut r = FrameReader::new(&junk[..]);
        assert!(matches!(r.next().await, Err(WireError::Malformed(_))));
        let mut big = [0u8; 16];
        big[0] = 1;
        big[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = FrameReader::new(&big[..]);
        assert!(matches!(r.next().await, Err(WireError::TooLarge(_))));
    }
}
