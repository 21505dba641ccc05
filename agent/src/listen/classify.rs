//! Which protocol a connection speaks, from its first bytes. Pure.

/// The HTTP/2 connection preface a prior-knowledge (h2c, gRPC) client sends first.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Request methods that mark an HTTP/1.x connection (RFC 9110 plus WebDAV's common ones).
const METHODS: [&[u8]; 13] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PROPFIND ",
    b"PROPPATCH ",
    b"MKCOL ",
    b"REPORT ",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Served by hyper: HTTP/1.x or HTTP/2 with prior knowledge.
    Http,
    /// Anything else (TLS, Redis, Postgres, …): held, then spliced.
    Opaque,
    /// Not enough bytes yet to tell.
    NeedMore,
}

/// Classifies a connection from the bytes peeked so far.
pub fn classify(prefix: &[u8]) -> Protocol {
    if prefix.is_empty() {
        return Protocol::NeedMore;
    }
    let candidates = METHODS.iter().copied().chain(std::iter::once(H2_PREFACE));
    let mut undecided = false;
    for token in candidates {
        let n = prefix.len().min(token.len());
        if prefix[..n] == token[..n] {
            if prefix.len() >= token.len() {
                return Protocol::Http;
            }
            undecided = true;
        }
    }
    if undecided {
        Protocol::NeedMore
    } else {
        Protocol::Opaque
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_methods_and_the_h2_preface_are_http() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Protocol::Http);
        assert_eq!(classify(b"POST /x HTTP/1.1"), Protocol::Http);
        assert_eq!(classify(H2_PREFACE), Protocol::Http);
    }

    #[test]
    fn a_prefix_of_a_method_needs_more_bytes() {
        assert_eq!(classify(b"GE"), Protocol::NeedMore);
        assert_eq!(classify(b"PRI * HT"), Protocol::NeedMore);
        assert_eq!(classify(b""), Protocol::NeedMore);
    }

    #[test]
    fn tls_redis_and_garbage_are_opaque() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00]), Protocol::Opaque);
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Protocol::Opaque);
        assert_eq!(classify(b"GETX"), Protocol::Opaque);
        assert_eq!(classify(b"ping\n"), Protocol::Opaque);
    }
}
