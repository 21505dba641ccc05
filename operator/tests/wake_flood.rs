//! The wake server under a flood, against a stand-in apiserver: 2,000 idle connections
//! and a flood of garbage and forged tokens from other addresses, and the agent's wake
//! still answered 202 within a second.
mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{jwt, now_secs};

/// A connection from `from` (another address of the loopback network: another client).
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

fn post(s: &mut TcpStream, token: &str, body: &str) -> std::io::Result<String> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST /v1/wake HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Issue 14 item 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_forged_tokens_do_not_delay_the_agents_wake() {
    let state = Arc::new(common::State::default());
    let agent = jwt("elasti-operator", now_secs() + 3600);
    if let (Ok(mut v), Ok(mut r)) = (state.valid_tokens.lock(), state.replicas.lock()) {
        v.push(agent.clone());
        r.insert("web".into(), 0);
    }
    let (addr, wake) =
        common::wake_server(state.clone(), vec![common::elastiservice("ns", "web")]).await;
    tokio::spawn(elasti_operator::wake::server::serve(addr, wake.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let body = r#"{"namespace":"ns","service":"web"}"#;
    let result = tokio::task::spawn_blocking(move || {
        // 2,000 idle connections from one client.
        let idle: Vec<TcpStream> = (0..2000)
            .filter_map(|_| connect_from([127, 0, 0, 2], addr).ok())
            .collect();
        // Garbage and forged tokens from another, as fast as it can for 2 s.
        let flood = std::thread::spawn(move || {
            let (mut sent, start) = (0, Instant::now());
            while start.elapsed() < Duration::from_secs(2) {
                let token = if sent % 2 == 0 {
                    "garbage".to_string()
                } else {
                    format!("{}{sent}", jwt("elasti-operator", now_secs() + 600))
                };
                if let Ok(mut s) = connect_from([127, 0, 0, 3], addr) {
                    let _ = post(&mut s, &token, body);
                }
                sent += 1;
            }
            sent
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut took = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let answer =
                connect_from([127, 0, 0, 1], addr).and_then(|mut s| post(&mut s, &agent, body));
            took.push((
                start.elapsed(),
                answer.map(|a| a.lines().next().unwrap_or("").to_string()),
            ));
            std::thread::sleep(Duration::from_millis(200));
        }
        let sent = flood.join().unwrap_or(0);
        (idle.len(), sent, took)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (idle, sent, took) = result;
    eprintln!(
        "{idle} idle connections, {sent} forged requests, agent wakes: {took:?}, {} TokenReviews",
        state.reviews()
    );
    for (t, a) in &took {
        assert!(
            a.as_ref().is_ok_and(|l| l.starts_with("HTTP/1.1 202")),
            "{a:?}"
        );
        assert!(*t < Duration::from_secs(1), "took {t:?}");
    }
    assert!(
        state.reviews() < 40,
        "{} TokenReviews for the flood",
        state.reviews()
    );
    let replicas = state
        .replicas
        .lock()
        .map(|r| r.get("web").copied())
        .ok()
        .flatten();
    assert_eq!(replicas, Some(1), "scaled up");
}
