//! How the policy writes durations, rates and sizes: in the annotations' own
//! forms (`200ms`, `300Mbit`) and in prose. The lowest module of the crate:
//! it imports nothing from it.

/// Trims a fixed-point number: `1.500` → `1.5`, `2.000` → `2`.
fn trim_num(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// `200ms`, `1.5s`: a duration in the annotation's own form.
pub fn fmt_duration_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{}s", trim_num(ms / 1e3, 3))
    } else {
        format!("{}ms", trim_num(ms, 3))
    }
}

/// `540 ms`, `2.3 s`: a predicted duration in prose.
pub fn fmt_ms_spaced(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{} s", trim_num(ms / 1e3, 1))
    } else {
        format!("{} ms", trim_num(ms, 0))
    }
}

/// `300Mbit`, `2.5Gbit`: a rate (bit/s) in the annotation's own form.
pub fn fmt_rate(bps: f64) -> String {
    let units = [(1e12, "Tbit"), (1e9, "Gbit"), (1e6, "Mbit"), (1e3, "kbit")];
    for (scale, name) in units {
        if bps >= scale {
            return format!("{}{name}", trim_num(bps / scale, 2));
        }
    }
    format!("{}bit", trim_num(bps, 0))
}

/// `130 MiB`, `1.5 GiB`: a size in prose.
pub fn fmt_bytes(b: u64) -> String {
    let mib = b as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{} GiB", trim_num(mib / 1024.0, 2))
    } else {
        format!("{} MiB", trim_num(mib, 1))
    }
}
