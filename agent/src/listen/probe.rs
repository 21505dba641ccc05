//! `probeResponse` on the wire (`elasti_api::probe`): whether the request head a cold
//! connection starts with is one the agent answers itself (a load balancer's health
//! check), so the service is neither held nor woken. Pure: the listener peeks the head and
//! asks [`inspect`].
use bytes::Bytes;
use elasti_api::probe::{CompiledRules, Request, decode_path};

/// Headers a probe head may carry; more, and it is not answered here (it is held).
const MAX_HEADERS: usize = 64;

/// A probe's answer, owned, for hyper to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: Bytes,
}

/// What a peeked head is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    /// Not HTTP/1.x that can parse: answered 400 at once.
    Invalid,
    /// A complete head a rule answers.
    Probe(Answer),
    /// A head that parses so far but is not complete yet (a client may write it in
    /// pieces): look again when more has arrived.
    Partial,
    /// Anything else (incomplete, h2, or no rule matches): held as usual.
    Hold,
}

/// Classifies the first bytes of a cold HTTP connection (`peeked`, not consumed).
pub fn inspect(peeked: &[u8], rules: &CompiledRules) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(peeked) {
        Ok(httparse::Status::Complete(_)) if !rules.is_empty() => {}
        Ok(httparse::Status::Complete(_)) => return Head::Hold,
        Ok(httparse::Status::Partial) => return Head::Partial,
        // More headers than a probe has: not answered here, but not malformed either.
        Err(httparse::Error::TooManyHeaders) => return Head::Hold,
        Err(_) => return Head::Invalid,
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Head::Hold;
    };
    // Origin form only (`/path?query`); an absolute-form target is a proxy request.
    let (raw_path, query) = target.split_once('?').unwrap_or((target, ""));
    if !raw_path.starts_with('/') {
        return Head::Hold;
    }
    let Some(path) = decode_path(raw_path) else {
        return Head::Hold;
    };
    let lines: Vec<(&str, &[u8])> = req.headers.iter().map(|h| (h.name, h.value)).collect();
    let request = Request {
        method,
        path: &path,
        query,
        headers: &lines,
    };
    match rules.answer(&request) {
        Some(reply) => Head::Probe(Answer {
            status: reply.status,
            content_type: reply.content_type,
            body: Bytes::copy_from_slice(reply.body),
        }),
        None => Head::Hold,
    }
}

#[cfg(test)]
mod tests {
    use elasti_api::{PathMatch, PathMatchType, ProbeResponse, ProbeRule, ProbeStatus};

    use super::*;

    fn rules() -> CompiledRules {
        let yaml = r#"
- path: {type: Exact, value: /healthz}
  method: GET
  response: {status: 200, body: '{"ok":true}'}
- path: {type: PathPrefix, value: /ready}
  headers: [{name: User-Agent, type: RegularExpression, value: "^ELB-"}]
  response: {status: 204, body: ""}
"#;
        let rules: Vec<ProbeRule> = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        CompiledRules::new(&rules).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_matching_health_check_is_answered_with_the_rule() {
        let head = b"GET /healthz HTTP/1.1\r\nHost: web\r\n\r\n";
        assert_eq!(
            inspect(head, &rules()),
            Head::Probe(Answer {
                status: 200,
                content_type: Some("text/plain; charset=utf-8"),
                body: Bytes::from_static(br#"{"ok":true}"#),
            })
        );
        let elb = b"GET /ready/deep?x=1 HTTP/1.1\r\nUser-Agent: ELB-HealthChecker/2.0\r\n\r\n";
        assert!(matches!(
            inspect(elb, &rules()),
            Head::Probe(Answer { status: 204, .. })
        ));
    }

    #[test]
    fn other_requests_are_held_and_bad_ones_refused() {
        let r = rules();
        // Not a rule's path, method, or header: a real request, held (and it wakes).
        assert_eq!(inspect(b"GET /api HTTP/1.1\r\n\r\n", &r), Head::Hold);
        assert_eq!(inspect(b"POST /healthz HTTP/1.1\r\n\r\n", &r), Head::Hold);
        assert_eq!(
            inspect(b"GET /ready HTTP/1.1\r\nUser-Agent: curl\r\n\r\n", &r),
            Head::Hold
        );
        // Incomplete: looked at again once more has arrived.
        assert_eq!(
            inspect(b"GET /healthz HTTP/1.1\r\nHost:", &r),
            Head::Partial
        );
        // An absolute-form target is not answered as a probe.
        assert_eq!(
            inspect(b"GET http://x/healthz HTTP/1.1\r\n\r\n", &r),
            Head::Hold
        );
        // No rules: never a probe.
        assert_eq!(
            inspect(b"GET /healthz HTTP/1.1\r\n\r\n", &CompiledRules::default()),
            Head::Hold
        );
        assert_eq!(inspect(b"GET /\x01 HTTP/1.1\r\n\r\n", &r), Head::Invalid);
    }

    #[test]
    fn a_head_answers_without_a_body() {
        let rules = CompiledRules::new(&[ProbeRule {
            path: Some(PathMatch {
                kind: Some(PathMatchType::PathPrefix),
                value: Some("/".into()),
            }),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
            response: ProbeResponse {
                status: ProbeStatus::Ok,
                body: "up".into(),
            },
        }])
        .unwrap_or_else(|e| panic!("{e}"));
        let Head::Probe(a) = inspect(b"HEAD / HTTP/1.1\r\n\r\n", &rules) else {
            panic!("a probe");
        };
        assert!(a.body.is_empty());
    }
}
