//! The metrics endpoint over real HTTP: `GET /metrics` answers 200 with the
//! OpenMetrics content type and the observed samples, other paths 404, and
//! a taken address fails to bind with a message naming it and the flag.

use std::{sync::Arc, time::Duration};

use mose_migrate::result::{LazyResult, MigrationResult};
use mose_plugin::metrics::{bind, serve, Metrics, CONTENT_TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn postcopy_result() -> MigrationResult {
    MigrationResult {
        status: "ok".into(),
        migration: "redis-1".into(),
        container: "redis".into(),
        destination: "10.0.0.2:7700".into(),
        technique: "postcopy".into(),
        rounds: 0,
        round_details: Vec::new(),
        downtime_ms: 183.0,
        total_ms: 3_412.0,
        bytes_sent: 34_078_720,
        phases: Vec::new(),
        error: None,
        plan: None,
        lazy_ms: Some(2_905.0),
        faults: Some(412),
        fault_p99_us: Some(2_140.0),
        lazy: Some(LazyResult {
            lazy_ms: 2_905.0,
            faults: 412,
            fault_p50_us: 350.0,
            fault_p99_us: 2_140.0,
            pages: 8_192,
            pages_sent: 8_192,
            pages_from_cache: 0,
            page_requests: 412,
            bytes: 33_600_000,
        }),
        address: None,
        connections: "kept".into(),
        lazy_source: Some("criu-page-server".into()),
        lazy_source_note: None,
    }
}

/// One HTTP/1.1 request on a fresh connection; the whole response.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        std::io::Result::Ok(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .expect("the metrics endpoint answers")
        .expect("HTTP exchange");
    String::from_utf8(out).expect("UTF-8 response")
}

#[tokio::test]
async fn metrics_are_served_over_http_and_other_paths_are_404() {
    let metrics = Arc::new(Metrics::new());
    metrics.observe_outgoing(&postcopy_result());
    // bound before the server task starts: connections queue until it accepts
    let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, metrics));

    let r = get(addr, "/metrics").await;
    let (head, body) = r.split_once("\r\n\r\n").expect("headers end");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-type: {CONTENT_TYPE}")),
        "{head}"
    );
    for line in [
        "mose_migrations_total{technique=\"postcopy\",direction=\"out\",outcome=\"ok\"} 1",
        "mose_migration_sent_bytes_total{technique=\"postcopy\"} 34078720",
        "mose_postcopy_faults_total{technique=\"postcopy\"} 412",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    if std::env::var_os("MOSE_PRINT_METRICS").is_some() {
        println!("{body}");
    }

    let r = get(addr, "/nope").await;
    assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");

    server.abort();
}

#[tokio::test]
async fn a_taken_address_names_itself_and_the_flag() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let e = bind(addr).await.expect_err("the address is taken");
    let msg = format!("{e:#}");
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("--metrics-listen"), "{msg}");
}
