//! A bearer token's claims, read before any TokenReview: a token that is no JWT, names
//! another audience, or has expired is refused here, so garbage costs the apiserver
//! nothing. Pure. The signature is not checked: the TokenReview stays the authority for
//! every token that passes.
//!
//! The payload is base64url JSON; reading two claims from it needs no JWT library (one
//! would want a key to verify with, which only the apiserver has).
use base64::{
    Engine,
    alphabet::URL_SAFE,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde::Deserialize;

/// Longer tokens are refused unread; a projected ServiceAccount token is about 1 KiB.
pub const MAX_TOKEN_LEN: usize = 16 << 10;
/// Clock skew allowed between the token's issuer and this replica.
pub const LEEWAY_SECS: i64 = 30;

const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a token was refused without a review.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// Not three base64url parts with a JSON payload.
    #[error("not a JWT")]
    NotJwt,
    /// The audience is not the wake audience.
    #[error("token audience is not {0}")]
    Audience(&'static str),
    /// `exp` has passed, or is missing.
    #[error("token expired")]
    Expired,
    /// `nbf` lies in the future.
    #[error("token not valid yet")]
    NotYetValid,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    aud: Audience,
    exp: Option<i64>,
    nbf: Option<i64>,
}

#[derive(Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

/// Whether `token` may be a valid token of `audience` at `now` (seconds since the epoch).
///
/// # Errors
/// The reason it cannot be.
pub fn precheck(token: &str, audience: &'static str, now: i64) -> Result<(), Refusal> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Refusal::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::NotJwt);
    };
    let bytes = BASE64URL.decode(payload).map_err(|_| Refusal::NotJwt)?;
    let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| Refusal::NotJwt)?;
    let ours = match &claims.aud {
        Audience::None => false,
        Audience::One(a) => a == audience,
        Audience::Many(all) => all.iter().any(|a| a == audience),
    };
    if !ours {
        return Err(Refusal::Audience(audience));
    }
    match claims.exp {
        Some(exp) if exp + LEEWAY_SECS >= now => {}
        _ => return Err(Refusal::Expired),
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
        return Err(Refusal::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const AUD: &str = "elasti-operator";

    fn token(claims: serde_json::Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{h}.{p}.c2ln")
    }

    #[test]
    fn a_plausible_token_passes_to_the_review() {
        let t = token(serde_json::json!({"aud": ["x", AUD], "exp": 2000, "nbf": 900}));
        assert_eq!(precheck(&t, AUD, 1000), Ok(()));
        let t = token(serde_json::json!({"aud": AUD, "exp": 2000}));
        assert_eq!(precheck(&t, AUD, 1000), Ok(()));
    }

    #[test]
    fn garbage_other_audiences_and_expired_tokens_are_refused() {
        let now = 1000;
        for (t, why) in [
            ("not-a-token".to_string(), Refusal::NotJwt),
            ("a.b".to_string(), Refusal::NotJwt),
            ("a.%%%.c".to_string(), Refusal::NotJwt),
            (
                format!("a.{}.c", URL_SAFE_NO_PAD.encode("[1]")),
                Refusal::NotJwt,
            ),
            (
                token(serde_json::json!({"aud": ["https://kubernetes.default.svc"], "exp": 2000})),
                Refusal::Audience(AUD),
            ),
            (
                token(serde_json::json!({"exp": 2000})),
                Refusal::Audience(AUD),
            ),
            (
                token(serde_json::json!({"aud": AUD, "exp": 900})),
                Refusal::Expired,
            ),
            (token(serde_json::json!({"aud": AUD})), Refusal::Expired),
            (
                token(serde_json::json!({"aud": AUD, "exp": 2000, "nbf": 1100})),
                Refusal::NotYetValid,
            ),
            ("x".repeat(MAX_TOKEN_LEN + 1), Refusal::TooLong),
        ] {
            assert_eq!(precheck(&t, AUD, now), Err(why), "{t:.60}");
        }
        // Within the leeway of its expiry it still goes to the review.
        let t = token(serde_json::json!({"aud": AUD, "exp": now - LEEWAY_SECS}));
        assert_eq!(precheck(&t, AUD, now), Ok(()));
    }
}
