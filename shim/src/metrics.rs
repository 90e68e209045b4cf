//! Container resource metrics (Stats) in the format containerd expects.
//!
//! On cgroup v1 (this project's edge nodes) the shim reads the controller
//! files itself, so memory limits, CPU usage, throttling, pids and OOM
//! counters are all reported; on cgroup v2 the shim crate's collector is used.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use containerd_shim::{
    cgroup::{collect_metrics_v2, get_cgroup},
    protos::{
        cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat,
            Throttle,
        },
        protobuf::{well_known_types::any::Any, Message},
    },
};

use crate::error::{Error, Result};

/// Collects the metrics of the cgroup holding `pid` (the container's init).
pub fn collect(pid: i32) -> Result<Any> {
    if pid <= 0 {
        return Err(Error::FailedPrecondition(
            "no metrics: the container has no running init process".into(),
        ));
    }
    let v1 = V1Paths::of_pid(pid)?;
    if !v1.0.is_empty() {
        let m = v1.collect();
        return Ok(Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: m.write_to_bytes()?,
            ..Default::default()
        });
    }
    let cg = get_cgroup(pid as u32)
        .map_err(|e| Error::Internal(format!("cannot find the cgroup of pid {pid}: {e}")))?;
    let m = collect_metrics_v2(&cg)
        .map_err(|e| Error::Internal(format!("cannot read cgroup v2 metrics: {e}")))?;
    Ok(Any {
        type_url: "io.containerd.cgroups.v2.Metrics".into(),
        value: m.write_to_bytes()?,
        ..Default::default()
    })
}

/// Directories of a process's cgroup v1 controllers, by controller name.
pub struct V1Paths(pub HashMap<String, PathBuf>);

impl V1Paths {
    pub fn of_pid(pid: i32) -> Result<Self> {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map_err(Error::io(format!("read /proc/{pid}/cgroup")))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(Error::io("read /proc/self/mountinfo"))?;
        Ok(Self::parse(&cg, &mountinfo))
    }

    fn parse(cgroup: &str, mountinfo: &str) -> Self {
        // controller -> mount point of its v1 hierarchy
        let mut mounts: HashMap<String, (String, String)> = HashMap::new();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let mut post = post.split_whitespace();
            if post.next() != Some("cgroup") {
                continue;
            }
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let (Some(root), Some(mp)) = (pre.get(3), pre.get(4)) else {
                continue;
            };
            let opts = post.nth(1).unwrap_or_default();
            for o in opts.split(',') {
                mounts.insert(o.to_string(), (root.to_string(), mp.to_string()));
            }
        }
        let mut out = HashMap::new();
        for line in cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            for c in ctrls.split(',').filter(|c| !c.is_empty()) {
                if let Some((root, mp)) = mounts.get(c) {
                    let rel = path.strip_prefix(root.as_str()).unwrap_or(path);
                    out.insert(
                        c.to_string(),
                        Path::new(mp).join(rel.trim_start_matches('/')),
                    );
                }
            }
        }
        V1Paths(out)
    }

    fn read(&self, ctrl: &str, file: &str) -> Option<String> {
        std::fs::read_to_string(self.0.get(ctrl)?.join(file)).ok()
    }

    fn num(&self, ctrl: &str, file: &str) -> u64 {
        self.read(ctrl, file)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn kv(&self, ctrl: &str, file: &str) -> HashMap<String, u64> {
        self.read(ctrl, file)
            .map(|s| {
                s.lines()
                    .filter_map(|l| {
                        let (k, v) = l.split_once(' ')?;
                        Some((k.to_string(), v.trim().parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn entry(&self, prefix: &str) -> MemoryEntry {
        let f = |n: &str| self.num("memory", &format!("{prefix}.{n}"));
        MemoryEntry {
            limit: f("limit_in_bytes"),
            usage: f("usage_in_bytes"),
            max: f("max_usage_in_bytes"),
            failcnt: f("failcnt"),
            ..Default::default()
        }
    }

    pub fn collect(&self) -> Metrics {
        let mut m = Metrics::new();
        if self.0.contains_key("memory") {
            let s = self.kv("memory", "memory.stat");
            let g = |k: &str| s.get(k).copied().unwrap_or(0);
            m.memory = Some(MemoryStat {
                cache: g("cache"),
                rss: g("rss"),
                rss_huge: g("rss_huge"),
                mapped_file: g("mapped_file"),
                dirty: g("dirty"),
                writeback: g("writeback"),
                pg_pg_in: g("pgpgin"),
                pg_pg_out: g("pgpgout"),
                pg_fault: g("pgfault"),
                pg_maj_fault: g("pgmajfault"),
                inactive_anon: g("inactive_anon"),
                active_anon: g("active_anon"),
                inactive_file: g("inactive_file"),
                active_file: g("active_file"),
                unevictable: g("unevictable"),
                hierarchical_memory_limit: g("hierarchical_memory_limit"),
                hierarchical_swap_limit: g("hierarchical_memsw_limit"),
                total_cache: g("total_cache"),
                total_rss: g("total_rss"),
                total_rss_huge: g("total_rss_huge"),
                total_mapped_file: g("total_mapped_file"),
                total_dirty: g("total_dirty"),
                total_writeback: g("total_writeback"),
                total_pg_pg_in: g("total_pgpgin"),
                total_pg_pg_out: g("total_pgpgout"),
                total_pg_fault: g("total_pgfault"),
                total_pg_maj_fault: g("total_pgmajfault"),
                total_inactive_anon: g("total_inactive_anon"),
                total_active_anon: g("total_active_anon"),
                total_inactive_file: g("total_inactive_file"),
                total_active_file: g("total_active_file"),
                total_unevictable: g("total_unevictable"),
                usage: Some(self.entry("memory")).into(),
                swap: Some(self.entry("memory.memsw")).into(),
                kernel: Some(self.entry("memory.kmem")).into(),
                kernel_tcp: Some(self.entry("memory.kmem.tcp")).into(),
                ..Default::default()
            })
            .into();
            let oom = self.kv("memory", "memory.oom_control");
            m.memory_oom_control = Some(MemoryOomControl {
                oom_kill_disable: oom.get("oom_kill_disable").copied().unwrap_or(0),
                under_oom: oom.get("under_oom").copied().unwrap_or(0),
                oom_kill: oom.get("oom_kill").copied().unwrap_or(0),
                ..Default::default()
            })
            .into();
        }
        if self.0.contains_key("cpuacct") || self.0.contains_key("cpu") {
            let acct = self.kv("cpuacct", "cpuacct.stat");
            // cpuacct.stat is in USER_HZ ticks; containerd reports nanoseconds
            let tick_ns = 1_000_000_000 / clock_ticks();
            let per_cpu = self
                .read("cpuacct", "cpuacct.usage_percpu")
                .map(|s| {
                    s.split_whitespace()
                        .filter_map(|v| v.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            let st = self.kv("cpu", "cpu.stat");
            m.cpu = Some(CPUStat {
                usage: Some(CPUUsage {
                    total: self.num("cpuacct", "cpuacct.usage"),
                    kernel: acct.get("system").copied().unwrap_or(0) * tick_ns,
                    user: acct.get("user").copied().unwrap_or(0) * tick_ns,
                    per_cpu,
                    ..Default::default()
                })
                .into(),
                throttling: Some(Throttle {
                    periods: st.get("nr_periods").copied().unwrap_or(0),
                    throttled_periods: st.get("nr_throttled").copied().unwrap_or(0),
                    throttled_time: st.get("throttled_time").copied().unwrap_or(0),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            })
            .into();
        }
        if self.0.contains_key("pids") {
            let limit = self
                .read("pids", "pids.max")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            m.pids = Some(PidsStat {
                current: self.num("pids", "pids.current"),
                limit,
                ..Default::default()
            })
            .into();
        }
        m
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_controllers_to_their_hierarchies() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let cgroup = "5:memory:/default/c1\n4:cpu,cpuacct:/default/c1\n0::/default/c1\n";
        let p = V1Paths::parse(cgroup, mountinfo);
        assert_eq!(
            p.0["memory"],
            PathBuf::from("/sys/fs/cgroup/memory/default/c1")
        );
        assert_eq!(
            p.0["cpuacct"],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/default/c1")
        );
        assert!(!p.0.contains_key("pids"));
    }

    #[test]
    fn pure_v2_has_no_v1_paths() {
        let mountinfo = "32 25 0:28 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert!(V1Paths::parse("0::/x\n", mountinfo).0.is_empty());
    }
}
