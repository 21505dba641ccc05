//! Hold and release through the real proxy: real sockets on loopback, the real test
//! workload servers as "pods", and the endpoint watch flipped the way the EndpointSlice
//! watch flips it. (In the cluster suite the flip comes from the apiserver.)
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use elasti_agent::{
    hold::{Budget, Endpoints, HeldService, ServiceId, admission::Limits},
    listen::{Caps, Context, Host, ProxyListener, bind_reuseport},
    metrics::{Metrics, Outcome, Protocol},
};
use elasti_workloads::client;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// How many callers started waiting (each tells the run loop, which decides the wakes).
#[derive(Default)]
struct Waiters(Mutex<usize>);

struct Proxy {
    addr: SocketAddr,
    service: Arc<HeldService>,
    metrics: Arc<Metrics>,
    endpoints: watch::Sender<Endpoints>,
    waiters: Arc<Waiters>,
    _listener: ProxyListener,
}

async fn proxy(limits: Limits) -> Proxy {
    proxy_with_caps(limits, 20_000).await
}

async fn proxy_with_caps(limits: Limits, per_listener: usize) -> Proxy {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let (tx, rx) = watch::channel(Endpoints::from(Vec::new()));
    let id = ServiceId {
        namespace: "test".into(),
        name: "web".into(),
        port: 80,
    };
    let waiters = Arc::new(Waiters::default());
    let w = waiters.clone();
    let service = Arc::new(HeldService::new(
        id.clone(),
        rx,
        limits,
        Arc::new(Budget::default()),
        Arc::new(move || *w.0.lock().unwrap_or_else(|e| e.into_inner()) += 1),
        metrics.held_gauge(&id),
    ));
    let listener = bind_reuseport("127.0.0.1:0".parse().expect("addr")).expect("bind proxy");
    let proxy_port = listener.local_addr().expect("addr").port();
    let ctx = Context {
        service: service.clone(),
        metrics: metrics.clone(),
        host: Host::Standalone {
            listen_address: "127.0.0.1".parse().expect("ip"),
        },
        proxy_port,
    };
    let caps = Caps {
        per_listener,
        node: Arc::new(tokio::sync::Semaphore::new(60_000)),
    };
    let listener = ProxyListener::spawn(listener, ctx, &caps).expect("spawn");
    Proxy {
        addr: listener.local_addr(),
        service,
        metrics,
        endpoints: tx,
        waiters,
        _listener: listener,
    }
}

/// Starts the HTTP test workload as pod `pod`.
async fn http_pod(pod: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind pod");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(elasti_workloads::http::serve(l, pod.to_string()));
    addr
}

async fn tcp_pod(pod: &str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind pod");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(elasti_workloads::tcp_echo::serve(l, pod.to_string()));
    addr
}

async fn wait_held(p: &Proxy, n: usize) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while p.service.held() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} held", p.service.held()));
}

async fn http1_get(addr: SocketAddr, path: &str) -> (u16, hyper::HeaderMap, String) {
    let a = client::get(addr, path)
        .await
        .expect("GET through the proxy");
    (a.status, a.headers, a.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_held_http_requests_and_tcp_connections_are_all_answered_after_release() {
    let p = proxy(Limits::default()).await;
    let http = (0..500)
        .map(|_| tokio::spawn(http1_get(p.addr, "/")))
        .collect::<Vec<_>>();
    let tcp = (0..500)
        .map(|i| {
            let addr = p.addr;
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.write_all(format!("hello {i}\n").as_bytes())
                    .await
                    .expect("write");
                let mut line = String::new();
                BufReader::new(&mut s)
                    .read_line(&mut line)
                    .await
                    .expect("read");
                line
            })
        })
        .collect::<Vec<_>>();
    wait_held(&p, 1000).await;
    assert_eq!(
        *p.waiters.0.lock().expect("lock"),
        1000,
        "the run loop hears of every waiter (it decides the one wake: plan::machine)"
    );

    let pod = http_pod("web-1").await;
    p.endpoints.send_replace(Endpoints::from(vec![pod]));
    for h in http {
        let (status, headers, body) = h.await.expect("task");
        assert_eq!(status, 200);
        assert_eq!(body, "pod=web-1\n");
        assert_eq!(
            headers.get("x-trace").map(|v| v.as_bytes()),
            Some(&b"abc"[..]),
            "request headers survive the hold"
        );
    }
    for t in tcp {
        // Opaque bytes spliced to an HTTP pod: its 400 proves they reached the pod.
        let line = t.await.expect("task");
        assert!(
            line.starts_with("HTTP/1.1 400"),
            "spliced to the pod: {line:?}"
        );
    }
    assert_eq!(
        p.metrics
            .count(p.service.id(), Protocol::Http1, Outcome::ForwardedAfterHold),
        500
    );
    assert_eq!(
        p.metrics
            .count(p.service.id(), Protocol::Tcp, Outcome::ForwardedAfterHold),
        500
    );
    assert_eq!(p.service.held(), 0);
}

#[tokio::test]
async fn raw_tcp_is_held_then_spliced_to_the_pod() {
    let p = proxy(Limits::default()).await;
    let addr = p.addr;
    let client = tokio::spawn(client::tcp_who_and_echo(addr));
    wait_held(&p, 1).await;
    p.endpoints
        .send_replace(Endpoints::from(vec![tcp_pod("echo-1").await]));
    let (who, echo) = client.await.expect("task").expect("tcp echo");
    assert_eq!(who, "pod=echo-1\n");
    assert_eq!(echo, "again\n");
}

#[tokio::test]
async fn streaming_large_bodies_websocket_and_grpc_survive_a_hold() {
    let p = proxy(Limits::default()).await;
    let addr = p.addr;
    let streamed = tokio::spawn(http1_get(addr, "/stream?chunks=3&interval_ms=20"));
    let big = tokio::spawn(client::echo_len(addr, 1 << 20));
    let ws = tokio::spawn(client::websocket_echo(addr, "hello"));
    let grpc = tokio::spawn(client::grpc_server_stream(addr, 2));
    wait_held(&p, 4).await;
    p.endpoints
        .send_replace(Endpoints::from(vec![http_pod("web-2").await]));

    let (status, _, body) = streamed.await.expect("task");
    assert_eq!(status, 200);
    assert_eq!(body.lines().count(), 3, "all chunks: {body}");
    assert_eq!(
        big.await.expect("task").expect("echo"),
        1 << 20,
        "1 MiB echoed whole"
    );
    assert_eq!(
        ws.await.expect("task").expect("websocket"),
        "hello",
        "websocket echo through the hold"
    );
    let (frames_ok, grpc_status) = grpc.await.expect("task").expect("grpc");
    assert!(frames_ok, "server-streaming gRPC frames echoed twice");
    assert_eq!(
        grpc_status.as_deref(),
        Some("0"),
        "grpc-status trailer survives"
    );
}

#[tokio::test]
async fn overflow_gives_503_with_retry_after_and_the_deadline_gives_504() {
    let p = proxy(Limits {
        max_held: 1,
        deadline: Duration::from_millis(500),
    })
    .await;
    let first = tokio::spawn(http1_get(p.addr, "/"));
    wait_held(&p, 1).await;
    let (status, headers, _) = http1_get(p.addr, "/").await;
    assert_eq!(status, 503);
    assert!(
        headers.contains_key("retry-after"),
        "503 carries Retry-After"
    );
    let (status, _, _) = first.await.expect("task");
    assert_eq!(status, 504, "nothing became Ready within the deadline");
    assert_eq!(
        p.metrics
            .count(p.service.id(), Protocol::Http1, Outcome::QueueFull),
        1
    );
    assert_eq!(
        p.metrics
            .count(p.service.id(), Protocol::Http1, Outcome::Deadline),
        1
    );
}

#[tokio::test]
async fn a_dead_endpoint_in_the_ready_set_does_not_fail_held_requests() {
    let p = proxy(Limits::default()).await;
    let clients: Vec<_> = (0..20)
        .map(|_| tokio::spawn(http1_get(p.addr, "/")))
        .collect();
    wait_held(&p, 20).await;
    // A pod killed mid-wake: still listed Ready, but its port refuses.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let live = http_pod("web-3").await;
    p.endpoints.send_replace(Endpoints::from(vec![dead, live]));
    for c in clients {
        let (status, _, body) = c.await.expect("task");
        assert_eq!((status, body.as_str()), (200, "pod=web-3\n"));
    }
}

#[tokio::test]
async fn garbage_is_spliced_and_closed_not_held_open() {
    let p = proxy(Limits::default()).await;
    p.endpoints
        .send_replace(Endpoints::from(vec![http_pod("web-4").await]));
    let mut g = TcpStream::connect(p.addr).await.expect("connect");
    g.write_all(b"\x00\x01garbage\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut g, &mut out),
    )
    .await;
    assert!(
        read.is_ok(),
        "a garbage connection is answered and closed by the pod, not held open"
    );
    let (status, _, _) = http1_get(p.addr, "/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_client_leaving_while_held_is_counted_gone_and_bad_http_malformed() {
    let p = proxy(Limits::default()).await;
    let count = |o| p.metrics.count(p.service.id(), Protocol::Http1, o);
    let mut c = TcpStream::connect(p.addr).await.expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .expect("write");
    wait_held(&p, 1).await;
    drop(c);
    tokio::time::timeout(Duration::from_secs(10), async {
        while p.service.held() > 0 || count(Outcome::ClientGone) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the departed client's slot is given back and counted ClientGone");
    assert_eq!(count(Outcome::Malformed), 0, "leaving is not malformed");

    let mut bad = TcpStream::connect(p.addr).await.expect("connect");
    bad.write_all(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_string(&mut bad, &mut answer),
    )
    .await
    .expect("answered and closed")
    .expect("read");
    assert!(answer.starts_with("HTTP/1.1 400"), "got {answer:?}");
    assert_eq!(count(Outcome::Malformed), 1);
    assert_eq!(
        p.waiters.0.lock().map(|n| *n).unwrap_or(0),
        1,
        "only the well-formed request was held; the bad one was answered at once"
    );
}

/// A "pod" that accepts and closes every connection before answering (it died after its
/// endpoint was listed Ready).
async fn dying_pod() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind pod");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    addr
}

#[tokio::test]
async fn a_held_http_1_1_answer_closes_the_connection_so_the_client_goes_direct_next() {
    let p = proxy(Limits::default()).await;
    let addr = p.addr;
    let held = tokio::spawn(async move {
        let mut conn = client::Http1::connect(addr).await.expect("connect");
        let first = conn
            .send("GET", "/", &[], bytes::Bytes::new())
            .await
            .expect("first answer");
        let second = conn.send("GET", "/", &[], bytes::Bytes::new()).await;
        (first, second)
    });
    wait_held(&p, 1).await;
    p.endpoints
        .send_replace(Endpoints::from(vec![http_pod("web-5").await]));
    let (first, second) = held.await.expect("task");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "the agent leaves the path after its first answer"
    );
    assert!(second.is_err(), "the connection is closed: {second:?}");
}

#[tokio::test]
async fn a_held_h2_connection_gets_goaway_after_its_streams() {
    use http_body_util::BodyExt;
    let p = proxy(Limits::default()).await;
    let addr = p.addr;
    let held = tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut tx, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let req = || {
            hyper::Request::get("http://web/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request")
        };
        let first = tx.send_request(req()).await.expect("first stream");
        let body = first.into_body().collect().await.expect("body").to_bytes();
        // GOAWAY: the connection ends once its streams are done.
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        (body, ended.is_ok())
    });
    wait_held(&p, 1).await;
    p.endpoints
        .send_replace(Endpoints::from(vec![http_pod("web-6").await]));
    let (body, ended) = held.await.expect("task");
    assert_eq!(&body[..], b"pod=web-6\n");
    assert!(ended, "the server ended the h2 connection (GOAWAY)");
}

/// A "pod" that reads the request and then resets the connection (it exited on SIGTERM
/// with the request unanswered: the kernel sends RST, not FIN).
async fn resetting_pod() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind pod");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let mut line = String::new();
            let mut r = BufReader::new(s);
            let _ = r.read_line(&mut line).await;
            let s = r.into_inner();
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    addr
}

/// Scenario 33's 502: in a scale-down, a request forwarded a moment before `/scale` went to
/// 0 met the pod exiting at once on SIGTERM, which resets the connection.
#[tokio::test]
async fn a_request_whose_pod_resets_before_answering_is_retried_once_elsewhere() {
    retried_once_elsewhere(resetting_pod().await, "web-8").await;
}

#[tokio::test]
async fn a_request_whose_pod_closes_before_answering_is_retried_once_elsewhere() {
    retried_once_elsewhere(dying_pod().await, "web-7").await;
}

/// A held GET released to `dying` first and a live pod `live` second: the first endpoint
/// tried fails before answering, and the request is answered by the other, counted.
async fn retried_once_elsewhere(dying: SocketAddr, live: &str) {
    let p = proxy(Limits::default()).await;
    let held = tokio::spawn(http1_get(p.addr, "/"));
    wait_held(&p, 1).await;
    let live_addr = http_pod(live).await;
    p.endpoints
        .send_replace(Endpoints::from(vec![dying, live_addr]));
    let (status, _, body) = held.await.expect("task");
    assert_eq!((status, body), (200, format!("pod={live}\n")));
    assert_eq!(
        p.metrics
            .count(p.service.id(), Protocol::Http1, Outcome::Retried),
        1,
        "the retry is counted"
    );
}

#[tokio::test]
async fn the_pod_sees_the_clients_address_and_not_the_hop_by_hop_headers() {
    let p = proxy(Limits::default()).await;
    let addr = p.addr;
    let held = tokio::spawn(async move {
        client::Http1::connect(addr)
            .await
            .expect("connect")
            .send(
                "GET",
                "/",
                &[
                    ("x-forwarded-for", "203.0.113.9"),
                    ("keep-alive", "timeout=9"),
                ],
                bytes::Bytes::new(),
            )
            .await
            .expect("answer")
    });
    wait_held(&p, 1).await;
    p.endpoints
        .send_replace(Endpoints::from(vec![http_pod("web-8").await]));
    let a = held.await.expect("task");
    // The workload echoes x- headers: the agent appended the client (127.0.0.1 here).
    assert_eq!(
        a.headers.get("x-forwarded-for").map(|v| v.as_bytes()),
        Some(&b"203.0.113.9, 127.0.0.1"[..])
    );
    assert_eq!(
        a.headers.get("x-forwarded-proto").map(|v| v.as_bytes()),
        Some(&b"http"[..])
    );
}

#[tokio::test]
async fn connections_past_the_listener_cap_are_closed_and_counted() {
    let p = proxy_with_caps(Limits::default(), 2).await;
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(http1_get(p.addr, "/")))
        .collect();
    wait_held(&p, 2).await;
    let mut extra = TcpStream::connect(p.addr).await.expect("connect");
    extra
        .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut extra, &mut out),
    )
    .await;
    assert!(read.is_ok() && out.is_empty(), "closed at accept: {out:?}");
    assert_eq!(
        p.metrics
            .count(p.service.id(), Protocol::Tcp, Outcome::Overloaded),
        1
    );
    p.endpoints
        .send_replace(Endpoints::from(vec![http_pod("web-9").await]));
    for h in held {
        assert_eq!(h.await.expect("task").0, 200, "the held ones are unharmed");
    }
}

#[tokio::test]
async fn a_probe_rule_is_answered_at_zero_without_holding_or_waking_and_a_real_request_wakes() {
    let p = proxy(Limits::default()).await;
    let rules: Vec<elasti_api::ProbeRule> = serde_yaml::from_str(
        r#"
- path: {type: Exact, value: /lb-check}
  response: {status: 200, body: '{"status":"ok"}'}
"#,
    )
    .expect("rules");
    p.service
        .set_probe_rules(elasti_api::probe::CompiledRules::new(&rules).expect("compiled"));
    let (status, headers, body) = http1_get(p.addr, "/lb-check").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/plain; charset=utf-8"),
        "as KubeElasti's resolver sends it"
    );
    assert_eq!(
        *p.waiters.0.lock().expect("lock"),
        0,
        "a probe is neither held nor woken for"
    );
    // A client that writes its head in pieces is answered too.
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    for piece in ["GET /lb", "-check HTTP/1.1\r\nHost: web\r\n", "\r\n"] {
        s.write_all(piece.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer)
        .await
        .expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with(r#"{"status":"ok"}"#),
        "{answer}"
    );
    assert_eq!(
        p.metrics
            .count(p.service.id(), Protocol::Http1, Outcome::ProbeAnswered),
        2
    );
    // A request no rule matches is held (and wakes), then answered by the pod.
    let real = tokio::spawn(http1_get(p.addr, "/api"));
    wait_held(&p, 1).await;
    assert_eq!(*p.waiters.0.lock().expect("lock"), 1);
    let pod = http_pod("pod-a").await;
    p.endpoints.send_replace(Endpoints::from(vec![pod]));
    let (status, _, body) = real.await.expect("task");
    assert_eq!(status, 200);
    assert!(body.contains("pod-a"), "{body}");
    // Warm, the probe path goes to the pod like any request.
    let (_, _, body) = http1_get(p.addr, "/lb-check").await;
    assert!(body.contains("pod-a"), "{body}");
}
