//! `probeResponse`: which rule answers a request for a sleeping target, and the answer as it
//! goes on the wire, both as KubeElasti v0.1.30's resolver decides them.
//!
//! Rules are tried in order and the first whose matchers all hold wins (Gateway API
//! `HTTPRouteMatch`):
//!
//! - **method**: equal ignoring ASCII case; absent matches any method.
//! - **path** (Go's percent-decoded `URL.Path`; see [`decode_path`]): `Exact` compares the
//!   whole path; `PathPrefix` compares whole elements (`/foo` matches `/foo` and `/foo/bar`,
//!   not `/foobar`; a prefix ending in `/` is a plain prefix; `/` or empty matches every path
//!   starting with `/`); `RegularExpression` matches anywhere in the path. An absent path or
//!   type is `PathPrefix`, an absent or empty prefix `/`.
//! - **headers**: names ignore case; a matcher holds when any of the header's values is
//!   `Exact`ly its value or matches its `RegularExpression` anywhere.
//! - **query parameters**: parsed as Go's `url.ParseQuery` (`&`-separated, `+` is a space; a
//!   pair with `;` or a bad `%` escape is dropped), names compared exactly, values as for
//!   headers.
//!
//! A rule KubeElasti cannot use (a regular expression that does not compile, a matcher whose
//! name is blank) never matches there; [`CompiledRules::lenient`] does the same, and
//! [`CompiledRules::new`] refuses it.
//!
//! The answer ([`ProbeResponse::reply`]) is the rule's status and its body verbatim (none to
//! `HEAD`, none with 204). The resolver sets no `Content-Type`, so Go's server sniffs one from
//! the body: `{"ok":true}` goes out as `text/plain; charset=utf-8`, an empty body with none.
//!
//! # Caveats
//!
//! Regular expressions are Go's RE2 syntax as the `regex` crate reads it: `\d`, `\w`, `\s`
//! and `\b` are Unicode-aware here and ASCII-only in Go, and `\Q…\E` is not supported. A
//! pattern whose compiled form passes 256 KiB is refused (Go has no such limit).
use std::borrow::Cow;

use regex::{Regex, RegexBuilder, bytes};

use crate::{HttpMethod, PathMatch, PathMatchType, ProbeResponse, ProbeRule, ValueMatchType};

mod sniff;

/// Rules one ElastiService may hold (KubeElasti's `maxItems`).
pub const MAX_RULES: usize = 32;
/// Header matchers one rule may hold.
pub const MAX_HEADERS: usize = 16;
/// Query parameter matchers one rule may hold.
pub const MAX_QUERY_PARAMS: usize = 16;
/// Longest path value, in bytes.
pub const MAX_PATH_VALUE: usize = 1024;
/// Longest header or query parameter name, in bytes.
pub const MAX_NAME: usize = 256;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE: usize = 4096;
/// Longest query parameter value, in bytes.
pub const MAX_QUERY_VALUE: usize = 1024;

/// Compiled size one regular expression may take, against the `regex` crate's default of
/// 10 MiB (an ElastiService may hold 32 × 33 patterns). Every pattern of ordinary shape within
/// the CRD's length limits fits (a 4 KiB literal, a hundred character classes); what does not
/// nests counted repetitions or repeats Unicode classes hundreds of times (`(a{100}){100}`,
/// a thousand `.`).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Lazy DFA cache of one regular expression: a full cache only slows matching down.
const REGEX_DFA_LIMIT: usize = 64 * 1024;

/// Why probe rules cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// More rules than the CRD allows.
    #[error("{count} probe rules, at most {MAX_RULES} are allowed")]
    TooManyRules { count: usize },
    /// More matchers in one rule than the CRD allows.
    #[error("probeResponse[{rule}].{field}: {count} matchers, at most {max} are allowed")]
    TooManyMatchers {
        rule: usize,
        field: &'static str,
        count: usize,
        max: usize,
    },
    /// A value longer than the CRD allows.
    #[error("probeResponse[{rule}].{field}: {len} bytes, at most {max} are allowed")]
    TooLong {
        rule: usize,
        field: String,
        len: usize,
        max: usize,
    },
    /// A header or query parameter matcher with a blank name, which KubeElasti never matches.
    #[error("probeResponse[{rule}].{field}: the name is blank")]
    BlankName { rule: usize, field: String },
    /// A regular expression that does not compile (or exceeds the size limit).
    #[error("probeResponse[{rule}].{field}: invalid regular expression")]
    InvalidRegex {
        rule: usize,
        field: String,
        #[source]
        source: regex::Error,
    },
}

/// A request, as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The method, as sent.
    pub method: &'a str,
    /// The percent-decoded path (Go's `URL.Path`): see [`decode_path`].
    pub path: &'a str,
    /// The raw query string, without the `?`.
    pub query: &'a str,
    /// Every header line as (name, value); a name may repeat.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// An answer as KubeElasti's resolver sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` header; `None`: no such header at all.
    pub content_type: Option<&'static str>,
    /// The body, empty for `HEAD` and 204.
    pub body: &'a [u8],
}

impl ProbeResponse {
    /// The answer to a request with `method`: the status; the body verbatim, except none for
    /// `HEAD` or a 204; and, since the resolver sets no `Content-Type`, the one Go's server
    /// sniffs from the body (`text/plain; charset=utf-8` for JSON), none for an empty body.
    pub fn reply(&self, method: &str) -> Reply<'_> {
        let body = if method == "HEAD" || self.status.as_u16() == 204 {
            &[][..]
        } else {
            self.body.as_bytes()
        };
        Reply {
            status: self.status.as_u16(),
            content_type: (!body.is_empty()).then(|| sniff::content_type(body)),
            body,
        }
    }
}

/// Probe rules with their regular expressions compiled once.
#[derive(Clone, Debug, Default)]
pub struct CompiledRules {
    /// In order; `None` for a rule that never matches.
    rules: Vec<Option<Rule>>,
}

#[derive(Clone, Debug)]
struct Rule {
    method: Option<HttpMethod>,
    path: PathMatcher,
    headers: Vec<(String, ValueMatcher<bytes::Regex>)>,
    query_params: Vec<(String, ValueMatcher<Regex>)>,
    response: ProbeResponse,
}

#[derive(Clone, Debug)]
enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Clone, Debug)]
enum ValueMatcher<R> {
    Exact(String),
    Regex(R),
}

impl CompiledRules {
    /// Compiles `rules`, refusing any the CRD would refuse or KubeElasti would never match.
    ///
    /// # Errors
    ///
    /// The first problem found.
    pub fn new(rules: &[ProbeRule]) -> Result<Self, Error> {
        if rules.len() > MAX_RULES {
            return Err(Error::TooManyRules { count: rules.len() });
        }
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| Rule::compile(i, rule).map(Some))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Compiles `rules` as KubeElasti's resolver uses them: a rule with a problem never
    /// matches, the others work. The problems are returned alongside, for reporting.
    pub fn lenient(rules: &[ProbeRule]) -> (Self, Vec<Error>) {
        let mut problems = Vec::new();
        if rules.len() > MAX_RULES {
            problems.push(Error::TooManyRules { count: rules.len() });
        }
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| Rule::compile(i, rule).map_err(|e| problems.push(e)).ok())
            .collect();
        (Self { rules }, problems)
    }

    /// Whether there are no rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The index of the first rule `request` matches.
    pub fn matches(&self, request: &Request<'_>) -> Option<usize> {
        let wants_query = self
            .rules
            .iter()
            .flatten()
            .any(|rule| !rule.query_params.is_empty());
        let query = if wants_query {
            parse_query(request.query)
        } else {
            Vec::new()
        };
        self.rules.iter().position(|rule| {
            rule.as_ref()
                .is_some_and(|rule| rule.matches(request, &query))
        })
    }

    /// The answer of the first rule `request` matches.
    pub fn answer(&self, request: &Request<'_>) -> Option<Reply<'_>> {
        let rule = self.rules[self.matches(request)?].as_ref()?;
        Some(rule.response.reply(request.method))
    }
}

impl Rule {
    fn compile(i: usize, rule: &ProbeRule) -> Result<Self, Error> {
        let at = At(i);
        at.count("headers", rule.headers.len(), MAX_HEADERS)?;
        at.count("queryParams", rule.query_params.len(), MAX_QUERY_PARAMS)?;
        let headers = rule.headers.iter().enumerate().map(|(j, h)| {
            let field = |part: &str| format!("headers[{j}].{part}");
            at.length(field("name"), &h.name, MAX_NAME)?;
            at.length(field("value"), &h.value, MAX_HEADER_VALUE)?;
            let matcher = match h.kind {
                Some(ValueMatchType::RegularExpression) => ValueMatcher::Regex(
                    bytes_regex(&h.value).map_err(|e| at.regex(field("value"), e))?,
                ),
                Some(ValueMatchType::Exact) | None => ValueMatcher::Exact(h.value.clone()),
            };
            Ok((at.name(field("name"), &h.name)?.to_owned(), matcher))
        });
        let query_params = rule.query_params.iter().enumerate().map(|(j, q)| {
            let field = |part: &str| format!("queryParams[{j}].{part}");
            at.length(field("name"), &q.name, MAX_NAME)?;
            at.length(field("value"), &q.value, MAX_QUERY_VALUE)?;
            at.name(field("name"), &q.name)?;
            let matcher = match q.kind {
                Some(ValueMatchType::RegularExpression) => {
                    ValueMatcher::Regex(regex(&q.value).map_err(|e| at.regex(field("value"), e))?)
                }
                Some(ValueMatchType::Exact) | None => ValueMatcher::Exact(q.value.clone()),
            };
            // Unlike a header name, KubeElasti looks a parameter name up untrimmed.
            Ok((q.name.clone(), matcher))
        });
        Ok(Self {
            method: rule.method,
            path: at.path(rule.path.as_ref())?,
            headers: headers.collect::<Result<_, Error>>()?,
            query_params: query_params.collect::<Result<_, Error>>()?,
            response: rule.response.clone(),
        })
    }

    fn matches(&self, request: &Request<'_>, query: &[(String, String)]) -> bool {
        let method = self
            .method
            .is_none_or(|m| m.as_str().eq_ignore_ascii_case(request.method));
        let path = match &self.path {
            PathMatcher::Exact(value) => request.path == value,
            PathMatcher::Prefix(prefix) => path_prefix(request.path, prefix),
            PathMatcher::Regex(re) => re.is_match(request.path),
        };
        let headers = self.headers.iter().all(|(name, matcher)| {
            request
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .any(|(_, value)| match matcher {
                    ValueMatcher::Exact(want) => *value == want.as_bytes(),
                    ValueMatcher::Regex(re) => re.is_match(value),
                })
        });
        let query_params = self.query_params.iter().all(|(name, matcher)| {
            query
                .iter()
                .filter(|(n, _)| n == name)
                .any(|(_, value)| match matcher {
                    ValueMatcher::Exact(want) => value == want,
                    ValueMatcher::Regex(re) => re.is_match(value),
                })
        });
        method && path && headers && query_params
    }
}

/// Checks on rule number `.0`, each failing with an error that names the field.
#[derive(Clone, Copy)]
struct At(usize);

impl At {
    fn count(self, field: &'static str, count: usize, max: usize) -> Result<(), Error> {
        if count > max {
            return Err(Error::TooManyMatchers {
                rule: self.0,
                field,
                count,
                max,
            });
        }
        Ok(())
    }

    fn length(self, field: String, value: &str, max: usize) -> Result<(), Error> {
        if value.len() > max {
            return Err(Error::TooLong {
                rule: self.0,
                field,
                len: value.len(),
                max,
            });
        }
        Ok(())
    }

    /// The name, trimmed; a blank one never matches in KubeElasti.
    fn name(self, field: String, name: &str) -> Result<&str, Error> {
        match name.trim() {
            "" => Err(Error::BlankName {
                rule: self.0,
                field,
            }),
            name => Ok(name),
        }
    }

    fn regex(self, field: String, source: regex::Error) -> Error {
        Error::InvalidRegex {
            rule: self.0,
            field,
            source,
        }
    }

    /// An absent path, type or prefix is `PathPrefix` `/`.
    fn path(self, path: Option<&PathMatch>) -> Result<PathMatcher, Error> {
        let value = path.and_then(|p| p.value.as_deref()).unwrap_or("");
        self.length("path.value".into(), value, MAX_PATH_VALUE)?;
        Ok(match path.and_then(|p| p.kind) {
            Some(PathMatchType::Exact) => PathMatcher::Exact(value.into()),
            Some(PathMatchType::RegularExpression) => {
                PathMatcher::Regex(regex(value).map_err(|e| self.regex("path.value".into(), e))?)
            }
            Some(PathMatchType::PathPrefix) | None => PathMatcher::Prefix(value.into()),
        })
    }
}

fn regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
}

fn bytes_regex(pattern: &str) -> Result<bytes::Regex, regex::Error> {
    bytes::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_LIMIT)
        .build()
}

/// Gateway API `PathPrefix`, element by element, as KubeElasti implements it.
fn path_prefix(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() || prefix == "/" {
        return path.starts_with('/');
    }
    if path == prefix {
        return true;
    }
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')
}

/// Whether every `%` in `s` starts a two-digit hex escape (Go refuses anything else).
fn escapes_are_valid(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().all(|(i, c)| {
        *c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Go's `url.ParseQuery`, keeping what it keeps: pairs split on `&` (empty ones skipped), a
/// pair containing `;` or a bad escape dropped, `+` read as a space. Invalid UTF-8 after
/// decoding becomes U+FFFD.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';') && escapes_are_valid(pair))
        .filter_map(|pair| form_urlencoded::parse(pair.as_bytes()).next())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

/// A raw request path decoded as Go decodes `URL.Path`: `%XX` escapes only (`+` stays a
/// `+`), invalid UTF-8 as U+FFFD. `None` when an escape is malformed: Go's server answers
/// such a request `400 Bad Request` before any rule sees it.
pub fn decode_path(raw: &str) -> Option<Cow<'_, str>> {
    escapes_are_valid(raw).then(|| percent_encoding::percent_decode_str(raw).decode_utf8_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeaderMatch, ProbeStatus, QueryParamMatch};

    fn rule(path: Option<(Option<PathMatchType>, &str)>, status: ProbeStatus) -> ProbeRule {
        ProbeRule {
            path: path.map(|(kind, value)| PathMatch {
                kind,
                value: Some(value.into()),
            }),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
            response: ProbeResponse {
                status,
                body: format!("{}", status.as_u16()),
            },
        }
    }

    fn compiled(rules: &[ProbeRule]) -> CompiledRules {
        CompiledRules::new(rules).unwrap_or_else(|e| panic!("{e}"))
    }

    fn req<'a>(method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            query: "",
            headers: &[],
        }
    }

    fn hits(rules: &CompiledRules, path: &str) -> bool {
        rules.matches(&req("GET", path)).is_some()
    }

    #[test]
    fn path_prefix_matches_whole_elements() {
        let rules = compiled(&[rule(
            Some((Some(PathMatchType::PathPrefix), "/health")),
            ProbeStatus::Ok,
        )]);
        assert!(hits(&rules, "/health"));
        assert!(hits(&rules, "/health/ready"));
        assert!(!hits(&rules, "/healthz"));
        assert!(!hits(&rules, "/"));
        let rules = compiled(&[rule(Some((None, "/api/")), ProbeStatus::Ok)]);
        assert!(hits(&rules, "/api/x"));
        assert!(!hits(&rules, "/api"));
    }

    #[test]
    fn absent_or_empty_path_matches_every_path() {
        for path in [
            None,
            Some((None, "")),
            Some((Some(PathMatchType::PathPrefix), "/")),
        ] {
            let rules = compiled(&[rule(path, ProbeStatus::Ok)]);
            assert!(hits(&rules, "/"));
            assert!(hits(&rules, "/any/thing"));
            assert!(!hits(&rules, "*"), "{path:?}");
        }
    }

    #[test]
    fn exact_path_matches_only_itself() {
        let rules = compiled(&[rule(
            Some((Some(PathMatchType::Exact), "/ready")),
            ProbeStatus::Ok,
        )]);
        assert!(hits(&rules, "/ready"));
        assert!(!hits(&rules, "/ready/"));
        assert!(!hits(&rules, "/readyz"));
    }

    #[test]
    fn regex_path_matches_anywhere() {
        let rules = compiled(&[rule(
            Some((Some(PathMatchType::RegularExpression), r"^/v[0-9]+/health$")),
            ProbeStatus::Ok,
        )]);
        assert!(hits(&rules, "/v2/health"));
        assert!(!hits(&rules, "/v2/healthz"));
        let rules = compiled(&[rule(
            Some((Some(PathMatchType::RegularExpression), "ping")),
            ProbeStatus::Ok,
        )]);
        assert!(
            hits(&rules, "/api/ping/now"),
            "unanchored, as Go's MatchString"
        );
    }

    #[test]
    fn method_ignores_case_and_absent_matches_any() {
        let mut r = rule(None, ProbeStatus::Ok);
        r.method = Some(HttpMethod::Get);
        let rules = compiled(&[r]);
        assert!(rules.matches(&req("GET", "/")).is_some());
        assert!(rules.matches(&req("get", "/")).is_some());
        assert!(rules.matches(&req("HEAD", "/")).is_none());
        let rules = compiled(&[rule(None, ProbeStatus::Ok)]);
        assert!(rules.matches(&req("DELETE", "/")).is_some());
    }

    #[test]
    fn headers_ignore_name_case_and_any_value_may_match() {
        let mut r = rule(None, ProbeStatus::Ok);
        r.headers = vec![
            HeaderMatch {
                name: " X-Check ".into(),
                kind: None,
                value: "1".into(),
            },
            HeaderMatch {
                name: "user-agent".into(),
                kind: Some(ValueMatchType::RegularExpression),
                value: "^ELB-HealthChecker/".into(),
            },
        ];
        let rules = compiled(&[r]);
        let ask = |headers: &[(&str, &[u8])]| {
            rules
                .matches(&Request {
                    headers,
                    ..req("GET", "/")
                })
                .is_some()
        };
        assert!(ask(&[
            ("x-check", b"1"),
            ("User-Agent", b"ELB-HealthChecker/2.0")
        ]));
        assert!(ask(&[
            ("X-CHECK", b"0"),
            ("x-check", b"1"),
            ("user-agent", b"ELB-HealthChecker/1.0"),
        ]));
        assert!(!ask(&[("x-check", b"1")]), "all matchers must hold");
        assert!(!ask(&[
            ("x-check", b"1 "),
            ("user-agent", b"ELB-HealthChecker/2.0")
        ]));
        assert!(!ask(&[("x-check", b"1"), ("user-agent", b"curl/8")]));
    }

    #[test]
    fn query_params_parse_as_go_does() {
        let mut r = rule(None, ProbeStatus::Ok);
        r.query_params = vec![
            QueryParamMatch {
                name: "probe".into(),
                kind: None,
                value: "a b".into(),
            },
            QueryParamMatch {
                name: "id".into(),
                kind: Some(ValueMatchType::RegularExpression),
                value: "^[0-9]+$".into(),
            },
        ];
        let rules = compiled(&[r]);
        let ask = |query| {
            rules
                .matches(&Request {
                    query,
                    ..req("GET", "/")
                })
                .is_some()
        };
        assert!(ask("probe=a+b&id=42"));
        assert!(ask("id=x&probe=a%20b&id=7"), "any of a name's values");
        assert!(!ask("probe=a+b"));
        assert!(!ask("Probe=a+b&id=1"), "names are case-sensitive");
        assert!(!ask("probe=a+b;x=1&id=1"), "a pair with ';' is dropped");
        assert!(
            !ask("probe=a+b&id=1%zz"),
            "a pair with a bad escape is dropped"
        );
        assert!(ask("&&probe=a+b&id=1&"));
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = compiled(&[
            rule(
                Some((Some(PathMatchType::Exact), "/healthz")),
                ProbeStatus::NoContent,
            ),
            rule(Some((None, "/")), ProbeStatus::ServiceUnavailable),
            rule(
                Some((Some(PathMatchType::Exact), "/healthz")),
                ProbeStatus::Ok,
            ),
        ]);
        assert_eq!(rules.matches(&req("GET", "/healthz")), Some(0));
        assert_eq!(rules.matches(&req("GET", "/other")), Some(1));
        let reply = rules.answer(&req("GET", "/other"));
        assert_eq!(reply.map(|r| r.status), Some(503));
        assert!(compiled(&[]).answer(&req("GET", "/")).is_none());
    }

    #[test]
    fn reply_is_sent_as_kubeelasti_sends_it() {
        let response = ProbeResponse {
            status: ProbeStatus::Ok,
            body: r#"{"ok":true}"#.into(),
        };
        assert_eq!(
            response.reply("GET"),
            Reply {
                status: 200,
                content_type: Some("text/plain; charset=utf-8"),
                body: br#"{"ok":true}"#,
            }
        );
        assert_eq!(
            response.reply("HEAD"),
            Reply {
                status: 200,
                content_type: None,
                body: b"",
            }
        );
        let html = ProbeResponse {
            status: ProbeStatus::ServiceUnavailable,
            body: "<html><body>asleep</body></html>".into(),
        };
        assert_eq!(
            html.reply("GET").content_type,
            Some("text/html; charset=utf-8")
        );
        let empty = ProbeResponse {
            status: ProbeStatus::Ok,
            body: String::new(),
        };
        assert_eq!(empty.reply("GET").content_type, None);
        let no_content = ProbeResponse {
            status: ProbeStatus::NoContent,
            body: "ignored".into(),
        };
        assert_eq!(
            no_content.reply("GET"),
            Reply {
                status: 204,
                content_type: None,
                body: b"",
            }
        );
    }

    #[test]
    fn limits_are_refused() {
        let one = rule(None, ProbeStatus::Ok);
        assert!(CompiledRules::new(&vec![one.clone(); MAX_RULES]).is_ok());
        let e = CompiledRules::new(&vec![one.clone(); MAX_RULES + 1]).err();
        assert!(
            matches!(e, Some(Error::TooManyRules { count: 33 })),
            "{e:?}"
        );

        let header = HeaderMatch {
            name: "x".into(),
            kind: None,
            value: "1".into(),
        };
        let mut r = one.clone();
        r.headers = vec![header.clone(); MAX_HEADERS];
        assert!(CompiledRules::new(std::slice::from_ref(&r)).is_ok());
        r.headers.push(header);
        let e = CompiledRules::new(&[r]).err();
        assert!(
            matches!(
                e,
                Some(Error::TooManyMatchers {
                    field: "headers",
                    count: 17,
                    ..
                })
            ),
            "{e:?}"
        );

        let mut r = one.clone();
        r.query_params = vec![
            QueryParamMatch {
                name: "q".into(),
                kind: None,
                value: "1".into(),
            };
            MAX_QUERY_PARAMS + 1
        ];
        let e = CompiledRules::new(&[r]).err();
        assert!(
            matches!(
                e,
                Some(Error::TooManyMatchers {
                    field: "queryParams",
                    ..
                })
            ),
            "{e:?}"
        );

        let mut r = rule(Some((None, "")), ProbeStatus::Ok);
        r.path = Some(PathMatch {
            kind: None,
            value: Some(format!("/{}", "a".repeat(MAX_PATH_VALUE))),
        });
        let e = CompiledRules::new(&[r]).err();
        assert!(
            matches!(
                &e,
                Some(Error::TooLong {
                    len: 1025,
                    max: 1024,
                    ..
                })
            ),
            "{e:?}"
        );
        assert_eq!(
            e.map(|e| e.to_string()).as_deref(),
            Some("probeResponse[0].path.value: 1025 bytes, at most 1024 are allowed")
        );
    }

    #[test]
    fn invalid_regexes_are_refused_or_never_match() {
        let bad_path = rule(
            Some((Some(PathMatchType::RegularExpression), "(unclosed")),
            ProbeStatus::Ok,
        );
        let mut bad_header = rule(None, ProbeStatus::NoContent);
        bad_header.headers = vec![HeaderMatch {
            name: "x".into(),
            kind: Some(ValueMatchType::RegularExpression),
            value: "[z-a]".into(),
        }];
        let mut blank = rule(None, ProbeStatus::NoContent);
        blank.query_params = vec![QueryParamMatch {
            name: "  ".into(),
            kind: None,
            value: "1".into(),
        }];
        let fallback = rule(None, ProbeStatus::ServiceUnavailable);

        let e = CompiledRules::new(std::slice::from_ref(&bad_path)).err();
        assert!(
            matches!(&e, Some(Error::InvalidRegex { rule: 0, field, .. }) if field == "path.value"),
            "{e:?}"
        );
        let e = CompiledRules::new(&[fallback.clone(), bad_header.clone()]).err();
        assert!(
            matches!(&e, Some(Error::InvalidRegex { rule: 1, field, .. }) if field == "headers[0].value"),
            "{e:?}"
        );
        let e = CompiledRules::new(&[blank.clone()]).err();
        assert!(matches!(e, Some(Error::BlankName { .. })), "{e:?}");
        let huge = rule(
            Some((Some(PathMatchType::RegularExpression), "(a{100}){100}")),
            ProbeStatus::Ok,
        );
        assert!(matches!(
            CompiledRules::new(&[huge]).err(),
            Some(Error::InvalidRegex { .. })
        ));

        // KubeElasti's resolver skips such rules and keeps going.
        let (rules, problems) = CompiledRules::lenient(&[bad_path, bad_header, blank, fallback]);
        assert_eq!(problems.len(), 3);
        assert_eq!(rules.matches(&req("GET", "/")), Some(3));
    }

    #[test]
    fn regexes_as_long_as_the_crd_allows_compile() {
        let long_literal = "x".repeat(MAX_HEADER_VALUE);
        assert!(bytes_regex(&long_literal).is_ok());
        let long_classes = "[a-z0-9_-]".repeat(MAX_PATH_VALUE / 10);
        assert!(regex(&long_classes).is_ok());
        let long_alternation = format!("^/({})$", vec!["health"; 140].join("|"));
        assert!(regex(&long_alternation).is_ok());
        assert!(regex(&".".repeat(200)).is_ok());
        assert!(
            regex(&".".repeat(MAX_QUERY_VALUE)).is_err(),
            "past the size limit"
        );
    }

    #[test]
    fn paths_decode_as_go_decodes_them() {
        assert_eq!(decode_path("/a%20b+c").as_deref(), Some("/a b+c"));
        assert_eq!(decode_path("/a%2Fb").as_deref(), Some("/a/b"));
        assert_eq!(decode_path("/caf%C3%A9").as_deref(), Some("/café"));
        assert_eq!(decode_path("/bad%zz"), None);
        assert_eq!(decode_path("/bad%2"), None);
    }
}
