//! A UAV-autopilot-like control loop: the latency-critical workload of the
//! MOSE paper's use cases.
//!
//! A ground station (or the vehicle's companion computer) streams attitude
//! setpoints at [`COMMAND_HZ`] over UDP; the service answers every command
//! with one telemetry datagram (the command's sequence number echoed, its own
//! telemetry sequence number, the state estimate). What makes it a control
//! loop rather than a ping server is the state it keeps between commands and
//! that must survive a migration intact:
//!
//! * an attitude/position/velocity estimate, integrated at every command
//!   from the setpoint and the time since the previous command;
//! * a ring of the last commands with the estimate after each one (the
//!   flight log a controller replays to re-tune or to audit), a few MiB,
//!   pre-filled at start so all of it is resident and non-zero;
//! * the telemetry counter: it continues across a checkpoint/restore and
//!   would restart at 1 if the service restarted, which the client checks.
//!
//! One thread serves the socket: commands are tiny and a blocking
//! `recv_from`/`send_to` pair answers within microseconds, so the client's
//! gap measurement is about the migration, not about the service.
//!
//! Wire format (all integers and floats little-endian):
//!
//! | bytes  | command                | telemetry                           |
//! |--------|------------------------|-------------------------------------|
//! | 0..4   | magic `MUAV`           | magic `MUAV`                        |
//! | 4      | kind 1                 | kind 2                              |
//! | 5..8   | zero                   | zero                                |
//! | 8..16  | seq (from 1)           | seq of the command answered         |
//! | 16..24 | client send time, µs   | that command's send time, echoed    |
//! | 24..40 | roll, pitch (rad), yaw rate (rad/s), thrust (0..1), f32 each | telemetry seq (from 1), u64 |
//! | 40..48 | —                      | commands received, u64              |
//! | 48..56 | —                      | time since the previous command at the service, µs, u64 |
//! | 56..68 | —                      | attitude roll, pitch, yaw (rad), f32 each |
//! | 68..80 | —                      | position x, y, z (m), f32 each      |

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Default UDP port (the one MAVLink ground stations listen on; the
/// protocol here is MOSE's own, see the module docs).
pub const UAV_PORT: u16 = 14550;
/// Command rate of the control loop, in Hz.
pub const COMMAND_HZ: f64 = 50.0;
/// Default size of the command history, in MiB.
pub const HISTORY_MIB: u64 = 4;
/// Bytes of one history entry.
pub const ENTRY_BYTES: usize = 64;
/// Largest time step the estimator integrates at once, in s: after a longer
/// silence (a migration's freeze) it extrapolates no further than this.
pub const MAX_STEP_S: f32 = 0.1;

const MAGIC: [u8; 4] = *b"MUAV";
const KIND_COMMAND: u8 = 1;
const KIND_TELEMETRY: u8 = 2;
/// Length of a command datagram, bytes.
pub const COMMAND_LEN: usize = 40;
/// Length of a telemetry datagram, bytes.
pub const TELEMETRY_LEN: usize = 80;
/// Standard gravity, m/s².
const G: f32 = 9.81;
/// Time constant of the attitude's response to a setpoint, s.
const ATTITUDE_TAU_S: f32 = 0.2;
/// Linear drag of the velocity, 1/s.
const DRAG_PER_S: f32 = 0.5;

/// An attitude setpoint, as an offboard controller sends it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Setpoint {
    /// Roll angle, rad.
    pub roll_rad: f32,
    /// Pitch angle, rad.
    pub pitch_rad: f32,
    /// Yaw rate, rad/s.
    pub yaw_rate_rad_s: f32,
    /// Collective thrust, 0..1 (0.5 hovers).
    pub thrust: f32,
}

/// One command datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Command {
    /// Command sequence number, from 1.
    pub seq: u64,
    /// Client's send time, µs since the client started.
    pub sent_us: u64,
    /// What the vehicle should do.
    pub setpoint: Setpoint,
}

/// One telemetry datagram, the answer to a command.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Telemetry {
    /// Sequence number of the command answered.
    pub cmd_seq: u64,
    /// That command's send time, echoed (µs since the client started).
    pub sent_us: u64,
    /// The service's telemetry counter (first answer 1; memory only).
    pub tele_seq: u64,
    /// Commands the service has received since it started.
    pub commands: u64,
    /// Time between this command and the previous one at the service, µs
    /// (0 for the first).
    pub loop_gap_us: u64,
    /// Attitude estimate: roll, pitch, yaw, rad.
    pub attitude_rad: [f32; 3],
    /// Position estimate: x, y, z (up), m.
    pub position_m: [f32; 3],
}

fn header(kind: u8, out: &mut [u8]) {
    out[..4].copy_from_slice(&MAGIC);
    out[4] = kind;
}

fn has_header(kind: u8, b: &[u8]) -> bool {
    b.len() >= 8 && b[..4] == MAGIC && b[4] == kind
}

fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_f32s(out: &mut [u8], at: usize, vs: &[f32]) {
    for (i, v) in vs.iter().enumerate() {
        out[at + 4 * i..at + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
}

fn get_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn get_f32(b: &[u8], at: usize) -> Option<f32> {
    Some(f32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn get_f32x3(b: &[u8], at: usize) -> Option<[f32; 3]> {
    Some([get_f32(b, at)?, get_f32(b, at + 4)?, get_f32(b, at + 8)?])
}

impl Command {
    /// The datagram.
    pub fn encode(&self) -> [u8; COMMAND_LEN] {
        let mut b = [0u8; COMMAND_LEN];
        header(KIND_COMMAND, &mut b);
        put_u64(&mut b, 8, self.seq);
        put_u64(&mut b, 16, self.sent_us);
        let s = &self.setpoint;
        put_f32s(
            &mut b,
            24,
            &[s.roll_rad, s.pitch_rad, s.yaw_rate_rad_s, s.thrust],
        );
        b
    }

    /// Parses a datagram; `None` for anything that is not a whole command.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < COMMAND_LEN || !has_header(KIND_COMMAND, b) {
            return None;
        }
        Some(Self {
            seq: get_u64(b, 8)?,
            sent_us: get_u64(b, 16)?,
            setpoint: Setpoint {
                roll_rad: get_f32(b, 24)?,
                pitch_rad: get_f32(b, 28)?,
                yaw_rate_rad_s: get_f32(b, 32)?,
                thrust: get_f32(b, 36)?,
            },
        })
    }
}

impl Telemetry {
    /// The datagram.
    pub fn encode(&self) -> [u8; TELEMETRY_LEN] {
        let mut b = [0u8; TELEMETRY_LEN];
        header(KIND_TELEMETRY, &mut b);
        put_u64(&mut b, 8, self.cmd_seq);
        put_u64(&mut b, 16, self.sent_us);
        put_u64(&mut b, 24, self.tele_seq);
        put_u64(&mut b, 32, self.commands);
        put_u64(&mut b, 40, self.loop_gap_us);
        put_f32s(&mut b, 48, &self.attitude_rad);
        put_f32s(&mut b, 60, &self.position_m);
        b
    }

    /// Parses a datagram; `None` for anything that is not whole telemetry.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < TELEMETRY_LEN || !has_header(KIND_TELEMETRY, b) {
            return None;
        }
        Some(Self {
            cmd_seq: get_u64(b, 8)?,
            sent_us: get_u64(b, 16)?,
            tele_seq: get_u64(b, 24)?,
            commands: get_u64(b, 32)?,
            loop_gap_us: get_u64(b, 40)?,
            attitude_rad: get_f32x3(b, 48)?,
            position_m: get_f32x3(b, 60)?,
        })
    }
}

/// The vehicle's state estimate.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Estimate {
    /// Roll, pitch, yaw, rad.
    pub attitude_rad: [f32; 3],
    /// x, y, z (up), m.
    pub position_m: [f32; 3],
    /// vx, vy, vz, m/s.
    pub velocity_m_s: [f32; 3],
}

impl Estimate {
    /// Integrates `dt_s` seconds (clamped to `0..=MAX_STEP_S`) under
    /// setpoint `s`: the attitude follows the setpoint with a first-order
    /// lag, thrust and tilt accelerate the vehicle, drag slows it, and it
    /// cannot sink below the ground (z = 0).
    pub fn step(&mut self, s: &Setpoint, dt_s: f32) {
        let dt = dt_s.clamp(0.0, MAX_STEP_S);
        let k = (dt / ATTITUDE_TAU_S).min(1.0);
        let [roll, pitch, yaw] = &mut self.attitude_rad;
        *roll += (s.roll_rad - *roll) * k;
        *pitch += (s.pitch_rad - *pitch) * k;
        *yaw = (*yaw + s.yaw_rate_rad_s * dt).rem_euclid(std::f32::consts::TAU);
        // thrust 0.5 hovers: the vertical acceleration is 2·thrust·g − g
        let lift = 2.0 * s.thrust.clamp(0.0, 1.0) * G;
        let (sy, cy) = yaw.sin_cos();
        let forward = lift * pitch.sin();
        let side = lift * roll.sin();
        let acc = [
            forward * cy - side * sy,
            forward * sy + side * cy,
            lift * roll.cos() * pitch.cos() - G,
        ];
        for ((v, p), a) in self
            .velocity_m_s
            .iter_mut()
            .zip(self.position_m.iter_mut())
            .zip(acc)
        {
            *v += (a - DRAG_PER_S * *v) * dt;
            *p += *v * dt;
        }
        if self.position_m[2] < 0.0 {
            self.position_m[2] = 0.0;
            self.velocity_m_s[2] = self.velocity_m_s[2].max(0.0);
        }
    }
}

/// One entry of the command history: the command and the estimate after it.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct HistoryEntry {
    /// Command seq (for pre-flight entries: their index | 1 << 63).
    pub seq: u64,
    /// Commands received when it was recorded.
    pub commands: u64,
    /// The setpoint: roll, pitch, yaw rate, thrust.
    pub setpoint: [f32; 4],
    /// Attitude after it, rad.
    pub attitude_rad: [f32; 3],
    /// Position after it, m.
    pub position_m: [f32; 3],
    /// Check word: a hash of the fields above, so a corrupt entry is seen.
    pub check: u64,
}

// The ring's size in MiB is computed from ENTRY_BYTES.
const _: () = assert!(std::mem::size_of::<HistoryEntry>() == ENTRY_BYTES);

impl HistoryEntry {
    fn check_of(&self) -> u64 {
        let mut h = self.seq ^ self.commands.rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15;
        let floats = self
            .setpoint
            .iter()
            .chain(&self.attitude_rad)
            .chain(&self.position_m);
        for f in floats {
            h = (h.rotate_left(23) ^ u64::from(f.to_bits())).wrapping_mul(0x100_0000_01B3);
        }
        h | 1
    }

    /// A distinct, non-zero entry that fills the ring at start (so all of
    /// it is resident memory a migration must move).
    fn preflight(i: usize) -> Self {
        let x = i as f32;
        let mut e = Self {
            seq: i as u64 | 1 << 63,
            commands: 0,
            setpoint: [x * 1e-6, -x * 1e-6, 0.0, 0.5],
            attitude_rad: [0.0; 3],
            position_m: [x, 0.0, 0.0],
            check: 0,
        };
        e.check = e.check_of();
        e
    }

    /// Whether the check word matches the fields.
    pub fn is_intact(&self) -> bool {
        self.check == self.check_of()
    }
}

/// The control loop's state: estimate, history ring and counters.
pub struct Autopilot {
    estimate: Estimate,
    history: Vec<HistoryEntry>,
    next: usize,
    tele_seq: u64,
    commands: u64,
}

impl Autopilot {
    /// A fresh autopilot with a history of `entries` entries (at least 1),
    /// every one filled.
    pub fn new(entries: usize) -> Self {
        Self {
            estimate: Estimate::default(),
            history: (0..entries.max(1)).map(HistoryEntry::preflight).collect(),
            next: 0,
            tele_seq: 0,
            commands: 0,
        }
    }

    /// Entries for a history of `mib` MiB.
    pub fn entries_for_mib(mib: u64) -> usize {
        usize::try_from(mib.saturating_mul(1 << 20))
            .unwrap_or(usize::MAX)
            .checked_div(ENTRY_BYTES)
            .unwrap_or(0)
    }

    /// The current estimate.
    pub fn estimate(&self) -> &Estimate {
        &self.estimate
    }

    /// Number of entries whose check word does not match (0 when intact).
    pub fn corrupt_entries(&self) -> usize {
        self.history.iter().filter(|e| !e.is_intact()).count()
    }

    /// Applies `cmd`, received `gap_us` µs after the previous command (0 for
    /// the first): integrates the estimate, records the history entry and
    /// returns the telemetry to send back.
    pub fn apply(&mut self, cmd: &Command, gap_us: u64) -> Telemetry {
        self.commands += 1;
        self.tele_seq += 1;
        self.estimate.step(&cmd.setpoint, gap_us as f32 / 1e6);
        let s = &cmd.setpoint;
        let mut e = HistoryEntry {
            seq: cmd.seq,
            commands: self.commands,
            setpoint: [s.roll_rad, s.pitch_rad, s.yaw_rate_rad_s, s.thrust],
            attitude_rad: self.estimate.attitude_rad,
            position_m: self.estimate.position_m,
            check: 0,
        };
        e.check = e.check_of();
        self.history[self.next] = e;
        self.next = (self.next + 1) % self.history.len();
        Telemetry {
            cmd_seq: cmd.seq,
            sent_us: cmd.sent_us,
            tele_seq: self.tele_seq,
            commands: self.commands,
            loop_gap_us: gap_us,
            attitude_rad: self.estimate.attitude_rad,
            position_m: self.estimate.position_m,
        }
    }
}

/// Configuration of the UAV service.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct UavConfig {
    /// UDP port.
    #[arg(long, value_name = "P", default_value_t = UAV_PORT)]
    pub port: u16,
    /// Listen address.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub bind: String,
    /// Size of the command history (the state kept between commands), MiB.
    #[arg(long, value_name = "MIB", default_value_t = HISTORY_MIB)]
    pub history_mib: u64,
}

impl Default for UavConfig {
    fn default() -> Self {
        Self {
            port: UAV_PORT,
            bind: "0.0.0.0".into(),
            history_mib: HISTORY_MIB,
        }
    }
}

/// How long a blocking receive waits before the loop looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);

/// A running UAV service (its thread ends when this is dropped).
pub struct UavService {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UavService {
    /// Fills the state, binds the socket and starts serving.
    pub fn start(config: &UavConfig) -> Result<Self> {
        let autopilot = Autopilot::new(Autopilot::entries_for_mib(config.history_mib));
        let socket = UdpSocket::bind((config.bind.as_str(), config.port))
            .with_context(|| format!("binding UDP {}:{}", config.bind, config.port))?;
        socket
            .set_read_timeout(Some(POLL))
            .context("setting the receive timeout")?;
        let addr = socket.local_addr().context("local address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::Builder::new()
            .name("uav-loop".into())
            .spawn(move || serve(&socket, autopilot, &s))
            .context("spawning the control loop")?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks while the service runs (for the binary).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UavService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The control loop: one telemetry datagram per command, to its sender.
/// Errors other than the receive timeout are logged and the loop goes on
/// (a migration's restore must not end the service).
fn serve(socket: &UdpSocket, mut autopilot: Autopilot, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    let mut last: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if no_datagram(&e) => continue,
            Err(e) => {
                eprintln!("mose-uav: receive: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Some(cmd) = Command::decode(&buf[..n]) else {
            continue;
        };
        let now = Instant::now();
        let gap_us = last.map_or(0, |l| (now - l).as_micros() as u64);
        last = Some(now);
        let t = autopilot.apply(&cmd, gap_us);
        if let Err(e) = socket.send_to(&t.encode(), from) {
            eprintln!("mose-uav: sending telemetry to {from}: {e}");
        }
    }
}

/// Whether a receive error only means "no datagram this time": the timeout,
/// or a signal (a freeze and thaw, a checkpoint's restore) interrupting it.
pub fn no_datagram(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(seq: u64, thrust: f32) -> Command {
        Command {
            seq,
            sent_us: seq * 20_000,
            setpoint: Setpoint {
                roll_rad: 0.1,
                pitch_rad: -0.05,
                yaw_rate_rad_s: 0.5,
                thrust,
            },
        }
    }

    #[test]
    fn datagrams_round_trip_and_reject_garbage() {
        let c = cmd(7, 0.6);
        let b = c.encode();
        assert_eq!(&b[..5], b"MUAV\x01");
        assert_eq!(Command::decode(&b), Some(c));
        assert_eq!(Command::decode(&b[..COMMAND_LEN - 1]), None, "short");
        assert_eq!(Telemetry::decode(&b), None, "a command is not telemetry");
        let t = Telemetry {
            cmd_seq: 7,
            sent_us: 140_000,
            tele_seq: 3,
            commands: 9,
            loop_gap_us: 20_000,
            attitude_rad: [0.1, 0.2, 0.3],
            position_m: [1.0, -2.0, 3.5],
        };
        let b = t.encode();
        assert_eq!(Telemetry::decode(&b), Some(t));
        assert_eq!(Command::decode(&b), None, "telemetry is not a command");
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(Telemetry::decode(&bad), None, "wrong magic");
        assert_eq!(Telemetry::decode(&[]), None);
    }

    #[test]
    fn hover_holds_altitude_and_yaw_integrates() {
        let mut e = Estimate {
            position_m: [0.0, 0.0, 10.0],
            ..Default::default()
        };
        let hover = Setpoint {
            yaw_rate_rad_s: 1.0,
            thrust: 0.5,
            ..Default::default()
        };
        for _ in 0..50 {
            e.step(&hover, 0.02);
        }
        assert!((e.position_m[2] - 10.0).abs() < 1e-3, "{e:?}");
        assert!(
            (e.attitude_rad[2] - 1.0).abs() < 1e-3,
            "yaw after 1 s at 1 rad/s: {e:?}"
        );
        // no thrust: it falls, but not through the ground
        for _ in 0..500 {
            e.step(&Setpoint::default(), 0.02);
        }
        assert_eq!(e.position_m[2], 0.0);
    }

    #[test]
    fn a_long_silence_is_extrapolated_by_one_step_at_most() {
        let climb = Setpoint {
            thrust: 1.0,
            ..Default::default()
        };
        let (mut a, mut b) = (Estimate::default(), Estimate::default());
        a.step(&climb, 0.45);
        b.step(&climb, MAX_STEP_S);
        assert_eq!(a, b);
    }

    #[test]
    fn commands_update_counters_history_and_estimate() {
        let mut ap = Autopilot::new(4);
        assert_eq!(ap.corrupt_entries(), 0);
        let t1 = ap.apply(&cmd(1, 0.7), 0);
        let t2 = ap.apply(&cmd(2, 0.7), 20_000);
        assert_eq!((t1.tele_seq, t2.tele_seq), (1, 2));
        assert_eq!((t2.cmd_seq, t2.sent_us, t2.commands), (2, 40_000, 2));
        assert_eq!(t2.loop_gap_us, 20_000);
        assert!(t2.position_m[2] > 0.0, "thrust 0.7 climbs: {t2:?}");
        for s in 3..=9 {
            ap.apply(&cmd(s, 0.5), 20_000);
        }
        // the ring wrapped: it holds commands 6..=9
        let mut seqs: Vec<u64> = ap.history.iter().map(|e| e.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, vec![6, 7, 8, 9]);
        assert_eq!(ap.corrupt_entries(), 0);
        ap.history[1].position_m[0] += 1.0;
        assert_eq!(ap.corrupt_entries(), 1);
    }

    #[test]
    fn history_size_follows_mib() {
        assert_eq!(Autopilot::entries_for_mib(4), 65_536);
        assert_eq!(Autopilot::entries_for_mib(0), 0);
        let ap = Autopilot::new(Autopilot::entries_for_mib(1));
        assert_eq!(ap.history.len() * ENTRY_BYTES, 1 << 20);
        let distinct: std::collections::HashSet<u64> = ap.history.iter().map(|e| e.seq).collect();
        assert_eq!(
            distinct.len(),
            ap.history.len(),
            "pre-flight entries are distinct"
        );
    }

    #[test]
    fn the_service_answers_every_command_with_telemetry() {
        let svc = UavService::start(&UavConfig {
            port: 0,
            bind: "127.0.0.1".into(),
            history_mib: 1,
        })
        .expect("start");
        let sock = UdpSocket::bind("127.0.0.1:0").expect("client socket");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        for seq in 1..=3 {
            sock.send_to(&cmd(seq, 0.5).encode(), svc.local_addr())
                .expect("send");
            let n = sock.recv(&mut buf).expect("telemetry");
            let t = Telemetry::decode(&buf[..n]).expect("decode");
            assert_eq!((t.cmd_seq, t.tele_seq, t.commands), (seq, seq, seq));
        }
        // garbage is ignored, not answered and not counted
        sock.send_to(b"hello", svc.local_addr()).expect("send");
        sock.send_to(&cmd(4, 0.5).encode(), svc.local_addr())
            .expect("send");
        let n = sock.recv(&mut buf).expect("telemetry");
        let t = Telemetry::decode(&buf[..n]).expect("decode");
        assert_eq!((t.cmd_seq, t.tele_seq), (4, 4));
    }
}
