//! Who may call the wake server: the bearer token must be a projected ServiceAccount token
//! of audience `elasti-operator` belonging to the agent's ServiceAccount.
//!
//! In order, each step cheaper than the next:
//! 1. an accepted token answered from the cache (agents send the same token for an hour);
//! 2. the claims read locally ([`super::precheck`]): garbage, another audience or an
//!    expired token is refused without asking the apiserver;
//! 3. a refusal from the cache;
//! 4. a TokenReview, at most [`REVIEWS_PER_SECOND`] per client address (burst
//!    [`REVIEW_BURST`]): one pod cannot make the operator flood the apiserver.
//!
//! Accepted and refused tokens are cached apart, so a flood of refused tokens never
//! evicts an agent's accepted one. Tokens are kept as keyed hashes, not in clear.
use std::{
    collections::HashMap,
    hash::BuildHasher,
    net::IpAddr,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use elasti_api::wake::AUDIENCE;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};

use super::precheck;

/// How long an accepted token stays accepted without a new review.
const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token stays refused (short: it may be a fresh token not yet valid).
const REFUSED_TTL: Duration = Duration::from_secs(5);
/// Accepted tokens cached: one or two per agent (a token and its rotation), so this many
/// nodes' worth. Past it, a new one is still accepted, only not cached.
const MAX_ALLOWED: usize = 16_384;
/// Refused tokens cached; past it the refused cache is emptied (never the accepted one).
const MAX_REFUSED: usize = 4096;
/// TokenReviews per second one client address may cause. An agent needs one per token
/// rotation; a restarting fleet a few.
pub const REVIEWS_PER_SECOND: u32 = 5;
/// How many TokenReviews one client address may cause at once.
pub const REVIEW_BURST: u32 = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The agent's ServiceAccount.
    Allowed,
    /// Not a valid token of our audience: 401.
    Unauthenticated(String),
    /// Valid, but someone other than the agent: 403.
    Forbidden(String),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client caused more TokenReviews than its share; it may retry shortly.
    #[error("too many token reviews from {0}")]
    RateLimited(IpAddr),
    /// The apiserver could not be asked.
    #[error("TokenReview")]
    Review(#[source] kube::Error),
}

pub struct Authenticator {
    client: Client,
    /// `system:serviceaccount:<namespace>:<name>` of the agent.
    allowed_user: String,
    hasher: std::hash::RandomState,
    allowed: Mutex<HashMap<u64, Instant>>,
    refused: Mutex<HashMap<u64, (Verdict, Instant)>>,
    reviews: DefaultKeyedRateLimiter<IpAddr>,
}

impl Authenticator {
    pub fn new(client: Client, agent_namespace: &str, agent_service_account: &str) -> Self {
        let per_second = NonZeroU32::new(REVIEWS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(REVIEW_BURST).unwrap_or(NonZeroU32::MIN);
        Self {
            client,
            allowed_user: format!(
                "system:serviceaccount:{agent_namespace}:{agent_service_account}"
            ),
            hasher: std::hash::RandomState::new(),
            allowed: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            reviews: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        }
    }

    /// Judges `token`, sent by `peer`.
    ///
    /// # Errors
    /// [`Error::RateLimited`] (429: retry shortly) or [`Error::Review`] (503: the apiserver
    /// could not be asked).
    pub async fn check(&self, token: &str, peer: IpAddr) -> Result<Verdict, Error> {
        let key = self.hasher.hash_one(token);
        let now = Instant::now();
        if self
            .allowed
            .lock()
            .is_ok_and(|c| c.get(&key).is_some_and(|until| *until > now))
        {
            return Ok(Verdict::Allowed);
        }
        if let Err(why) = precheck::precheck(token, AUDIENCE, jiff::Timestamp::now().as_second()) {
            return Ok(Verdict::Unauthenticated(why.to_string()));
        }
        if let Ok(c) = self.refused.lock()
            && let Some((verdict, until)) = c.get(&key)
            && *until > now
        {
            return Ok(verdict.clone());
        }
        if self.reviews.check_key(&peer).is_err() {
            return Err(Error::RateLimited(peer));
        }
        if self.reviews.len() > MAX_ALLOWED {
            self.reviews.retain_recent();
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Error::Review)?;
        let verdict = judge(&answer, &self.allowed_user);
        let now = Instant::now();
        if verdict == Verdict::Allowed {
            if let Ok(mut c) = self.allowed.lock() {
                if c.len() >= MAX_ALLOWED {
                    c.retain(|_, until| *until > now);
                }
                if c.len() < MAX_ALLOWED {
                    c.insert(key, now + ALLOWED_TTL);
                }
            }
        } else if let Ok(mut c) = self.refused.lock() {
            if c.len() >= MAX_REFUSED {
                c.retain(|_, (_, until)| *until > now);
                if c.len() >= MAX_REFUSED {
                    c.clear();
                }
            }
            c.insert(key, (verdict.clone(), now + REFUSED_TTL));
        }
        Ok(verdict)
    }
}

/// The verdict on a TokenReview answer. Pure.
pub fn judge(review: &TokenReview, allowed_user: &str) -> Verdict {
    let Some(status) = review.status.as_ref() else {
        return Verdict::Unauthenticated("no review status".into());
    };
    if status.authenticated != Some(true) {
        return Verdict::Unauthenticated(
            status
                .error
                .clone()
                .unwrap_or_else(|| "token not authenticated".into()),
        );
    }
    if !status.audiences.iter().flatten().any(|a| a == AUDIENCE) {
        return Verdict::Unauthenticated(format!("token audience is not {AUDIENCE}"));
    }
    let user = status
        .user
        .as_ref()
        .and_then(|u| u.username.clone())
        .unwrap_or_default();
    if user == allowed_user {
        Verdict::Allowed
    } else {
        Verdict::Forbidden(format!("{user} is not {allowed_user}"))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    use super::*;

    fn review(authenticated: bool, audience: &str, user: &str) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(vec![audience.into()]),
                user: Some(UserInfo {
                    username: Some(user.into()),
                    ..Default::default()
                }),
                error: None,
            }),
            ..Default::default()
        }
    }

    const AGENT: &str = "system:serviceaccount:elasti-system:elasti-agent";

    #[test]
    fn only_the_agent_with_our_audience_is_allowed() {
        assert_eq!(
            judge(&review(true, AUDIENCE, AGENT), AGENT),
            Verdict::Allowed
        );
        assert!(matches!(
            judge(
                &review(true, AUDIENCE, "system:serviceaccount:default:default"),
                AGENT
            ),
            Verdict::Forbidden(_)
        ));
        assert!(matches!(
            judge(
                &review(true, "https://kubernetes.default.svc", AGENT),
                AGENT
            ),
            Verdict::Unauthenticated(_)
        ));
        assert!(matches!(
            judge(&review(false, AUDIENCE, AGENT), AGENT),
            Verdict::Unauthenticated(_)
        ));
    }
}
