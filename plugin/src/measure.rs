//! Measurements the policy predicts from: how much memory a container would
//! move, how fast it dirties it, and how fast the link to a destination is.
//!
//! All of it is sampled without freezing the application: memory by hashing
//! a stride of the processes' present pages twice, an interval apart (this
//! kernel has no soft-dirty bits to ask instead); the link by a short probe
//! through the same mutually authenticated stream a migration would use.

use std::{collections::HashMap, os::unix::fs::FileExt, time::Duration};

use anyhow::{anyhow, bail, Result};
use mose_wire::{
    blocks::{hash_block, zero_hash},
    BlockHash, Message, BLOCK_SIZE, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};

use mose_migrate::{
    memory::{ProcMemory, PAGEMAP_CHUNK},
    sender::connect_to,
    tls::Identity,
};

/// One container's memory, as the policy sees it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct MemorySample {
    /// Estimated non-zero private memory: what a migration moves.
    pub memory_bytes: u64,
    /// Present private pages (zero pages included), in bytes.
    pub present_bytes: u64,
    /// Distinct bytes changed per second over the sampling interval.
    pub dirty_bytes_per_s: f64,
    pub interval_ms: f64,
    /// Pages hashed per snapshot (every `stride`-th page).
    pub sampled_pages: u64,
    pub changed_pages: u64,
}

/// Hashes of every `stride`-th present page of `pids`, by (pid, address),
/// plus the number of present pages seen in total.
fn snapshot(pids: &[u32], stride: u64) -> (HashMap<(u32, u64), BlockHash>, u64) {
    let mut out = HashMap::new();
    let mut present_total = 0u64;
    let page = BLOCK_SIZE as u64;
    for &pid in pids {
        let Some(proc_mem) = ProcMemory::open(pid) else {
            continue;
        };
        let mut buf = vec![0u8; BLOCK_SIZE];
        for r in proc_mem.private_writable() {
            let (first, last) = (r.start / page, r.end / page);
            let mut at = first;
            while at < last {
                let n = (last - at).min(PAGEMAP_CHUNK);
                let Some(pm) = proc_mem.entries(at, n as usize) else {
                    break;
                };
                for (i, e) in pm.iter().enumerate() {
                    if !e.present_or_swapped() {
                        continue;
                    }
                    present_total += 1;
                    let page_no = at + i as u64;
                    if !page_no.is_multiple_of(stride) {
                        continue;
                    }
                    if proc_mem.mem.read_exact_at(&mut buf, page_no * page).is_ok() {
                        out.insert((pid, page_no * page), hash_block(&buf));
                    }
                }
                at += n;
            }
        }
    }
    (out, present_total)
}

/// Samples the memory of `pids` twice, `interval` apart, hashing every
/// `stride`-th present page. Blocking: run it on a blocking thread.
pub fn sample_memory(pids: &[u32], interval: Duration, stride: u64) -> Result<MemorySample> {
    if pids.is_empty() {
        bail!("the container has no processes to measure");
    }
    let stride = stride.max(1);
    let t0 = std::time::Instant::now();
    let (before, _) = snapshot(pids, stride);
    if before.is_empty() {
        bail!("could not read the memory of processes {pids:?} (gone, or not root?)");
    }
    std::thread::sleep(interval);
    let (after, present) = snapshot(pids, stride);
    if after.is_empty() {
        bail!("processes {pids:?} went away while their memory was sampled");
    }
    // the two snapshots each take time: the interval is start to start
    let elapsed = t0.elapsed().as_secs_f64() - interval.as_secs_f64() / 2.0;
    let span = interval
        .as_secs_f64()
        .max(elapsed.min(interval.as_secs_f64() * 2.0));
    let zero = zero_hash();
    let changed = after
        .iter()
        .filter(|(k, h)| before.get(k) != Some(h))
        .count() as u64;
    let zero_pages = after.values().filter(|h| **h == zero).count() as u64;
    let sampled = after.len() as u64;
    let nonzero_fraction = if sampled == 0 {
        1.0
    } else {
        (sampled - zero_pages) as f64 / sampled as f64
    };
    let present_bytes = present * BLOCK_SIZE as u64;
    Ok(MemorySample {
        memory_bytes: (present_bytes as f64 * nonzero_fraction) as u64,
        present_bytes,
        dirty_bytes_per_s: (changed * stride * BLOCK_SIZE as u64) as f64 / span,
        interval_ms: span * 1000.0,
        sampled_pages: sampled,
        changed_pages: changed,
    })
}

/// A measured link between this node and a destination endpoint.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct LinkSample {
    pub bytes_per_s: f64,
    pub bytes: u64,
    pub ms: f64,
}

/// Measures the rate to the endpoint at `to` by sending `bytes` of filler
/// through an authenticated stream; the destination times the arrival.
pub async fn probe_link(
    identity: &Identity,
    to: &str,
    bytes: u64,
    io: Duration,
) -> Result<LinkSample> {
    let c = connect_to(identity, to, io).await?;
    let (mut r, mut w) = (c.reader, c.writer);
    let stalled = || anyhow!("link probe to {to}: the endpoint did not take data");
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        node: identity.node.clone(),
    };
    tokio::time::timeout(io, w.message(&hello))
        .await
        .map_err(|_| stalled())??;
    match tokio::time::timeout(io, r.message()).await {
        Ok(Ok(Message::HelloOk { node, .. })) => mose_migrate::peer::check_claim(&node, &c.node)
            .map_err(|why| anyhow!("link probe to {to}: {why}"))?,
        Ok(Ok(other)) => bail!("link probe to {to}: expected HelloOk, got {other:?}"),
        Ok(Err(e)) => bail!("link probe to {to}: {e}"),
        Err(_) => bail!("link probe to {to}: no answer within {io:?}"),
    }
    tokio::time::timeout(io, w.message(&Message::Measure { bytes }))
        .await
        .map_err(|_| stalled())??;
    let chunk = vec![0u8; 256 << 10];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        tokio::time::timeout(io, w.file_data(&chunk[..n]))
            .await
            .map_err(|_| anyhow!("link probe to {to}: the link stalled for {io:?}"))??;
        sent += n as u64;
    }
    tokio::time::timeout(io, w.flush())
        .await
        .map_err(|_| anyhow!("link probe to {to}: the link stalled"))??;
    match tokio::time::timeout(io * 2, r.message()).await {
        Ok(Ok(Message::Measured { bytes, ms })) if ms > 0.0 && bytes > 0 => Ok(LinkSample {
            bytes_per_s: bytes as f64 / (ms / 1000.0),
            bytes,
            ms,
        }),
        Ok(Ok(Message::Failed { step, error })) => {
            bail!("link probe to {to}: the endpoint failed at {step}: {error}")
        }
        Ok(Ok(other)) => bail!("link probe to {to}: unexpected answer {other:?}"),
        Ok(Err(e)) => bail!("link probe to {to}: {e}"),
        Err(_) => bail!("link probe to {to}: no result within {:?}", io * 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_process_dirties_nothing_and_a_busy_one_does() {
        let mut idle = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let s = sample_memory(&[idle.id()], Duration::from_millis(200), 1).unwrap();
        let _ = idle.kill();
        let _ = idle.wait();
        assert!(s.present_bytes > 0 && s.sampled_pages > 0, "{s:?}");
        assert!(s.memory_bytes <= s.present_bytes);
        assert_eq!(s.changed_pages, 0, "an idle sleep changed pages: {s:?}");

        // this test process itself: a thread rewrites a 4 MiB buffer
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let busy = std::thread::spawn(move || {
            let mut v = vec![1u8; 4 << 20];
            let mut k = 0u8;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                k = k.wrapping_add(1);
                for p in v.chunks_mut(BLOCK_SIZE) {
                    p[0] = k;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            v.len()
        });
        std::thread::sleep(Duration::from_millis(50));
        let s = sample_memory(&[std::process::id()], Duration::from_millis(200), 1).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = busy.join();
        // at least the 4 MiB buffer changed within 200 ms: >= ~10 MiB/s
        assert!(s.changed_pages >= 1000, "{s:?}");
        assert!(s.dirty_bytes_per_s > 5e6, "{s:?}");
    }

    #[test]
    fn no_processes_is_an_error() {
        let e = sample_memory(&[], Duration::from_millis(1), 4).unwrap_err();
        assert!(e.to_string().contains("no processes"), "{e}");
    }
}
