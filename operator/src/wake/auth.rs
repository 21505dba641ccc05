//! Who may call `/v1/wake`: the bearer token must be a projected ServiceAccount token of
//! audience `elasti-operator` (checked with TokenReview) belonging to the agent's
//! ServiceAccount. Answers are cached briefly, so a burst of wakes costs one review.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use elasti_api::wake::AUDIENCE;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};

/// How long an accepted token stays accepted without a new review.
const ALLOWED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token stays refused (short: it may be a fresh token not yet valid).
const REFUSED_TTL: Duration = Duration::from_secs(5);
/// Bound on cached tokens; the cache is emptied beyond it.
const MAX_CACHED: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The agent's ServiceAccount.
    Allowed,
    /// Not a valid token of our audience: 401.
    Unauthenticated(String),
    /// Valid, but someone other than the agent: 403.
    Forbidden(String),
}

pub struct Authenticator {
    client: Client,
    /// `system:serviceaccount:<namespace>:<name>` of the agent.
    allowed_user: String,
    cache: Mutex<HashMap<String, (Verdict, Instant)>>,
}

impl Authenticator {
    pub fn new(client: Client, agent_namespace: &str, agent_service_account: &str) -> Self {
        Self {
            client,
            allowed_user: format!(
                "system:serviceaccount:{agent_namespace}:{agent_service_account}"
            ),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Reviews `token` (or answers from the cache).
    ///
    /// # Errors
    /// When the apiserver could not be asked; the caller answers 503 so the agent retries.
    pub async fn check(&self, token: &str) -> Result<Verdict, kube::Error> {
        if let Ok(cache) = self.cache.lock()
            && let Some((verdict, until)) = cache.get(token)
            && *until > Instant::now()
        {
            return Ok(verdict.clone());
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
            .await?;
        let verdict = judge(&answer, &self.allowed_user);
        let ttl = if verdict == Verdict::Allowed {
            ALLOWED_TTL
        } else {
            REFUSED_TTL
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(token.to_string(), (verdict.clone(), Instant::now() + ttl));
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
