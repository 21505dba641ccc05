//! Who may wake, against a stand-in apiserver: what is refused locally costs no
//! TokenReview, and one client cannot make the operator flood the apiserver.
mod common;

use std::{net::IpAddr, sync::Arc};

use common::{State, jwt, now_secs};
use elasti_operator::wake::auth::{Authenticator, Error, REVIEW_BURST, Verdict};

fn ip(last: u8) -> IpAddr {
    [10, 0, 0, last].into()
}

/// Issue 14 item 2: a token whose audience or expiry is wrong, or that is not a JWT at
/// all, is refused without asking the apiserver.
#[tokio::test]
async fn a_wrong_audience_an_expired_token_or_garbage_costs_no_token_review() {
    let state = Arc::new(State::default());
    let auth = Authenticator::new(
        common::client(state.clone()),
        "elasti-system",
        "elasti-agent",
    );
    let now = now_secs();
    for token in [
        "not-a-token".to_string(),
        jwt("https://kubernetes.default.svc", now + 600),
        jwt("elasti-operator", now - 600),
    ] {
        let verdict = auth.check(&token, ip(1)).await;
        assert!(
            matches!(verdict, Ok(Verdict::Unauthenticated(_))),
            "{token}: {verdict:?}"
        );
    }
    assert_eq!(state.reviews(), 0, "TokenReviews sent");
}

/// Issue 14 item 2: forged tokens that pass the local check are reviewed at most at the
/// client's rate; another client, and the agent's cached token, are not held back.
#[tokio::test]
async fn token_reviews_are_rate_limited_per_client_and_the_agent_stays_cached() {
    let state = Arc::new(State::default());
    let agent = jwt("elasti-operator", now_secs() + 3600);
    if let Ok(mut v) = state.valid_tokens.lock() {
        v.push(agent.clone());
    }
    let auth = Authenticator::new(
        common::client(state.clone()),
        "elasti-system",
        "elasti-agent",
    );
    assert_eq!(auth.check(&agent, ip(1)).await.ok(), Some(Verdict::Allowed));
    let mut limited = 0;
    for i in 0..200 {
        let forged = format!("{}x{i}", jwt("elasti-operator", now_secs() + 600));
        match auth.check(&forged, ip(9)).await {
            Err(Error::RateLimited(_)) => limited += 1,
            Ok(Verdict::Unauthenticated(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let reviews = state.reviews();
    assert!(
        reviews <= 1 + REVIEW_BURST as usize + 2,
        "{reviews} reviews for 200 forged tokens"
    );
    assert!(limited >= 170, "{limited} limited");
    // The agent's token: from the cache, no review, whatever the flood did.
    for _ in 0..10 {
        assert_eq!(auth.check(&agent, ip(1)).await.ok(), Some(Verdict::Allowed));
    }
    assert_eq!(
        state.reviews(),
        reviews,
        "the agent was answered from the cache"
    );
    // Another client's forged token is still reviewed.
    let other = jwt("elasti-operator", now_secs() + 601);
    assert!(matches!(
        auth.check(&other, ip(2)).await,
        Ok(Verdict::Unauthenticated(_))
    ));
    assert_eq!(state.reviews(), reviews + 1);
}
