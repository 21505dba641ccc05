//! The wake server when the process runs out of file descriptors: one test in its own
//! binary, because it lowers the process's limit.
mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

/// Issue 14 item 2: `accept()` failing with EMFILE must not end the wake server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_does_not_end_the_wake_server() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let state = Arc::new(common::State::default());
    let (addr, wake) = common::wake_server(state, Vec::new()).await;
    let served = tokio::spawn(elasti_operator::wake::server::serve(addr, wake.clone()));
    let get = move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    let up = tokio::task::spawn_blocking(move || {
        (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            get().is_ok()
        })
    });
    assert!(up.await.unwrap_or(false), "wake server never answered");
    assert!(
        wake.health.listening.load(Ordering::Acquire),
        "ready while listening"
    );

    // Room for a few more descriptors only: the clients' own connects take half of them,
    // the server's accepts the other half, until accept fails with EMFILE.
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(64) as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or_else(|e| panic!("{e}"));
    setrlimit(Resource::RLIMIT_NOFILE, open + 40, hard).unwrap_or_else(|e| panic!("{e}"));
    let idle: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..60)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok())
            .collect()
    })
    .await
    .unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(idle);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap_or_else(|e| panic!("{e}"));

    assert!(!served.is_finished(), "the wake server ended: {served:?}");
    let answer = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        loop {
            match get() {
                Ok(a) => return Ok(a),
                Err(e) if start.elapsed() > Duration::from_secs(10) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        answer.as_ref().is_ok_and(|a| a.starts_with("HTTP/1.1 404")),
        "after the descriptors came back: {answer:?}"
    );
    let m = &wake.metrics;
    assert!(m.accept_errors.get() > 0, "the EMFILE accepts were counted");
}
