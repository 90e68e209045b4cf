//! Receiving a migration up to `Commit`: the image (imported at once, while
//! the source still runs), pre-copy rounds, the layout hint, and after the
//! source's freeze the final blocks, CRIU files, manifests and rootfs.

use std::io::Write;

use mose_wire::{
    frame::{Frame, FrameKind},
    ContainerIdentity, Message,
};
use tokio::io::{AsyncRead, AsyncWrite};
use xxhash_rust::xxh3::Xxh3;

use super::{
    incoming::{safe_name, FileSink, Incoming},
    machine::{ReceiverEvent, ReceiverState},
    restore::import_image,
    session::Session,
};
use crate::error::{InPhase, MigrateError, Phase, Result};

/// Receives frames into `inc` until the source commits.
pub async fn run<R, W>(
    s: &mut Session<'_, R, W>,
    container: &ContainerIdentity,
    inc: &mut Incoming,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    s.link.phase = Phase::Transfer;
    while matches!(s.state, ReceiverState::Transfer { .. }) {
        let f = s.link.next_frame(s.cfg.io_timeout).await?;
        match f.kind {
            FrameKind::Control => {
                let m = s.link.message_of(&f)?;
                s.step(ReceiverEvent::Message(&m))?;
                on_message(s, container, inc, m).await?;
            }
            _ => on_data(s, inc, &f)?,
        }
    }
    Ok(())
}

/// Blocks, manifests, file data; lazy pages are refused by the machine.
fn on_data<R, W>(s: &mut Session<'_, R, W>, inc: &mut Incoming, f: &Frame) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let peer = s.link.peer.clone();
    let wire = |source, what: &str| MigrateError::Wire {
        phase: Phase::Transfer,
        peer: peer.clone(),
        what: what.into(),
        source,
    };
    match f.kind {
        FrameKind::Blocks => {
            s.step(ReceiverEvent::Blocks)?;
            for (h, d) in f.blocks().map_err(|e| wire(e, "decoding blocks"))? {
                inc.add_block(h, d)?;
            }
        }
        FrameKind::Manifest => {
            let (name, hashes) = f.manifest().map_err(|e| wire(e, "decoding a manifest"))?;
            let hint = name.starts_with("hint:");
            s.step(ReceiverEvent::Manifest { hint })?;
            match name.strip_prefix("hint:") {
                // a layout before the freeze (pre-copy) or after the dump (cold): lay the image out now
                Some(image) => inc.speculate(image, &hashes)?,
                None => inc.manifests.push((name, hashes)),
            }
        }
        FrameKind::FileData => {
            s.step(ReceiverEvent::FileData {
                len: f.payload.len() as u64,
            })?;
            let sink = inc.current.as_mut().ok_or_else(|| {
                MigrateError::local(Phase::Transfer, "file data without an open file")
            })?;
            sink.hasher.update(&f.payload);
            sink.file
                .write_all(&f.payload)
                .in_phase(Phase::Transfer, &format!("writing {}", sink.name))?;
        }
        FrameKind::Pages | FrameKind::PagesHeld => s.step(ReceiverEvent::Pages)?,
        FrameKind::Control => {}
    }
    Ok(())
}

/// A control message the machine allowed.
async fn on_message<R, W>(
    s: &mut Session<'_, R, W>,
    container: &ContainerIdentity,
    inc: &mut Incoming,
    m: Message,
) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match m {
        Message::FileBegin { name, size, hash } => {
            let name = safe_name(&name)?.to_string();
            let path = inc.dir.join("files").join(&name);
            let file = std::fs::File::create(&path)
                .in_phase(Phase::Transfer, &format!("creating {}", path.display()))?;
            inc.current = Some(FileSink {
                name,
                size,
                hash,
                file,
                hasher: Xxh3::new(),
            });
        }
        Message::FileEnd { name } => {
            let sink = inc.current.take().ok_or_else(|| {
                MigrateError::local(Phase::Transfer, format!("FileEnd {name} without a file"))
            })?;
            let got = format!("{:032x}", sink.hasher.digest128());
            if got != sink.hash {
                return Err(MigrateError::local(
                    Phase::Transfer,
                    format!("file {name} arrived corrupt (hash {got} != {})", sink.hash),
                ));
            }
            inc.bytes += sink.size;
            let path = inc.dir.join("files").join(&name);
            if name == "image.tar" {
                // import now, while the source still runs: not in the downtime;
                // the source freezes only once the image is in place
                s.link.phase = Phase::Image;
                import_image(&s.cfg.containerd, container, &path).await?;
                let _ = std::fs::remove_file(&path);
                s.link.send(&Message::Ack).await?;
                s.link.phase = Phase::Transfer;
            } else {
                inc.files.insert(name, path);
            }
        }
        // rounds are bookkeeping of the source; Commit ends the loop
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The receiving path fed arbitrary, truncated and mutated frame
    //! streams: it ends with an error or at `Commit`, never panics or hangs.

    use std::time::Duration;

    use mose_wire::{
        blocks::hash_block, frame::FrameReader, FrameWriter, Message, Technique, BLOCK_SIZE,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::{link::Link, receiver::config::EndpointConfig, tls::Identity};

    fn config(dir: &std::path::Path) -> EndpointConfig {
        EndpointConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            containerd: dir.join("no-containerd.sock"),
            identity: Identity::new(dir, "n2"),
            work_root: dir.to_path_buf(),
            state_dir: dir.join("state"),
            release_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(1),
            handoffs: Default::default(),
            pod_planner: None,
            lazy_source: crate::lazy::LazySource::TmpfsDump {
                reason: "unit test".into(),
            },
            on_incoming: None,
            on_outgoing: None,
            admission: std::sync::Arc::new(crate::admission::Admission::defaults()),
        }
    }

    fn container() -> ContainerIdentity {
        ContainerIdentity {
            id: "c".into(),
            namespace: "default".into(),
            image: "img".into(),
            spec: serde_json::json!({}),
            labels: Default::default(),
            snapshotter: String::new(),
            runtime: String::new(),
        }
    }

    /// A valid stream from the first round to `Commit`.
    fn valid_stream() -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut w = FrameWriter::new(Vec::new());
            let pages: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; BLOCK_SIZE]).collect();
            let hashes: Vec<_> = pages.iter().map(|p| hash_block(p)).collect();
            let blocks: Vec<_> = hashes
                .iter()
                .zip(&pages)
                .map(|(h, p)| (*h, p.as_slice()))
                .collect();
            let file = b"core image".to_vec();
            let msgs = [
                Message::RoundStart {
                    round: 1,
                    final_round: false,
                },
                Message::RoundEnd {
                    round: 1,
                    blocks: 3,
                },
                Message::FileBegin {
                    name: "core-1.img".into(),
                    size: file.len() as u64,
                    hash: format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&file)),
                },
            ];
            w.message(&msgs[0]).await.unwrap();
            w.blocks(&blocks).await.unwrap();
            w.manifest("hint:pages-1.img", &hashes).await.unwrap();
            w.message(&msgs[1]).await.unwrap();
            w.message(&msgs[2]).await.unwrap();
            w.file_data(&file).await.unwrap();
            w.message(&Message::FileEnd {
                name: "core-1.img".into(),
            })
            .await
            .unwrap();
            w.manifest("pages-1.img", &hashes).await.unwrap();
            w.message(&Message::Commit).await.unwrap();
            w.flush().await.unwrap();
            w.into_inner()
        })
    }

    /// Runs the receiving path over `bytes`; Ok when it reached `Commit`.
    fn receive(bytes: &[u8]) -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let link = Link::new(
                FrameReader::new(bytes),
                FrameWriter::new(tokio::io::sink()),
                "source".into(),
                cfg.io_timeout,
            );
            let mut s = Session::new(&cfg, link);
            s.state = ReceiverState::Transfer {
                technique: Technique::Precopy,
                file: None,
            };
            let mut inc = Incoming::create(dir.path().join("m")).unwrap();
            let res =
                tokio::time::timeout(Duration::from_secs(30), run(&mut s, &container(), &mut inc))
                    .await
                    .expect("the receiver hung");
            if res.is_ok() {
                assert_eq!(s.state, ReceiverState::Restoring);
                assert_eq!(inc.manifests.len(), 1);
                assert!(inc.files.contains_key("core-1.img"));
            }
            res
        })
    }

    #[test]
    fn a_valid_stream_reaches_commit() {
        receive(&valid_stream()).unwrap();
    }

    #[test]
    fn every_cut_of_a_valid_stream_is_an_error() {
        let s = valid_stream();
        // every cut in the first frames, then one in 61 bytes (the page data
        // in between is checksummed as a whole)
        for cut in (0..s.len()).filter(|c| *c < 256 || c % 61 == 0) {
            assert!(
                receive(&s[..cut]).is_err(),
                "a stream cut at {cut} of {} was accepted",
                s.len()
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            prop_assert!(receive(&bytes).is_err());
        }

        /// Overwritten bytes: refused, or (when the change is in a place no
        /// check covers, which the checksums make impossible) accepted whole.
        #[test]
        fn mutated_streams_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut s = valid_stream();
            let original = s.clone();
            for (i, b) in edits {
                let i = i.index(s.len());
                s[i] = b;
            }
            let res = receive(&s);
            prop_assert!(res.is_err() || s == original, "a corrupted stream was accepted");
        }
    }
}
