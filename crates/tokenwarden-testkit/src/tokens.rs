//! Every token the server issued and what became of it: access tokens, refresh tokens, and the
//! families that tie together the tokens descended from one sign-in. The current time is passed
//! in, so these rules are tested with chosen times.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use serde_json::{Value, json};

use crate::RefreshTokenUsage;
use crate::jwt::SigningKey;
use crate::refresh::{Expired, RefreshPolicy};

/// The longest lifetime an access token gets, in seconds (about a century): longer lifetimes
/// (e.g. `Duration::MAX`) are capped so that `exp` and `expires_in` cannot overflow.
pub(crate) const MAX_TOKEN_LIFETIME_SECS: u64 = 100 * 365 * 24 * 3600;

/// The `exp` (Unix seconds) of a token issued at `issued_at` (time since the epoch) that lives
/// `lifetime_secs`: like a real authorization server's JWT, the issue time is truncated to whole
/// seconds, so the token dies up to one second before `issued_at + lifetime_secs`.
fn expiry(issued_at: Duration, lifetime_secs: u64) -> u64 {
    issued_at
        .as_secs()
        .saturating_add(lifetime_secs.min(MAX_TOKEN_LIFETIME_SECS))
}

/// Whether a token with this `exp` is still accepted at `now` (time since the epoch): like a
/// real API, only while the current whole second is before `exp`.
fn is_live(exp: u64, now: Duration) -> bool {
    now.as_secs() < exp
}

/// Whom an access token was issued to and for, as the protected API and introspection report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    /// The client the token was issued to: for an exchanged token, the client that exchanged.
    pub(crate) client_id: String,
    /// The token's subject (`sub`): the user of a user's token, the client of a client's own
    /// token, and for an exchanged token the subject of the token it was exchanged for.
    pub(crate) sub: String,
    /// The signed-in user, for a user's token and for tokens exchanged for one.
    pub(crate) user: Option<String>,
    /// The scope granted with the token, if any.
    pub(crate) scope: Option<String>,
    /// The audiences the token is for (`aud`), in the order they were asked for; often none.
    pub(crate) audience: Vec<String>,
    /// Who acts for the subject (`act`, RFC 8693 §4.1), for exchanged tokens only.
    pub(crate) actor: Option<Actor>,
}

impl Owner {
    /// A client's own token (client credentials, extension grants): the client is the subject.
    pub(crate) fn client(client_id: &str, scope: Option<&str>) -> Self {
        Self {
            client_id: client_id.to_owned(),
            sub: client_id.to_owned(),
            user: None,
            scope: scope.map(str::to_owned),
            audience: Vec::new(),
            actor: None,
        }
    }

    /// A user's token, issued to `client_id`.
    pub(crate) fn user(client_id: &str, user: &str, scope: Option<&str>) -> Self {
        Self {
            client_id: client_id.to_owned(),
            sub: user.to_owned(),
            user: Some(user.to_owned()),
            scope: scope.map(str::to_owned),
            audience: Vec::new(),
            actor: None,
        }
    }
}

/// The party acting for a token's subject: the `act` claim of RFC 8693 §4.1, with the actors
/// before it nested inside, most recent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Actor {
    /// The actor's subject: a client id, or a user for an actor token of a user.
    pub(crate) sub: String,
    /// The actor of the token this one was exchanged for, if that was exchanged too.
    pub(crate) prior: Option<Box<Actor>>,
}

impl Actor {
    /// `{"sub": .., "act": {..}}`, as the claim is written.
    pub(crate) fn to_json(&self) -> Value {
        let mut claim = json!({ "sub": self.sub });
        if let Some(prior) = &self.prior {
            claim["act"] = prior.to_json();
        }
        claim
    }
}

/// The `token_type` of an issued token (RFC 6749 §7.1, RFC 8693 §2.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenType {
    /// An access token, accepted by the protected API and as a subject or actor token.
    Bearer,
    /// `N_A`: a token that is not an access token (an ID token from a token exchange), accepted
    /// nowhere, only introspected.
    NotApplicable,
}

impl TokenType {
    /// The `token_type` value of a token response.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer",
            Self::NotApplicable => "N_A",
        }
    }
}

#[derive(Debug)]
struct AccessToken {
    owner: Owner,
    /// The family of a user's token, so revoking the family revokes it.
    family: Option<u64>,
    token_type: TokenType,
    /// Unix seconds, as a JWT's `iat` claim.
    iat: u64,
    /// Unix seconds, as a JWT's `exp` claim.
    exp: u64,
}

/// A live token as introspection (RFC 7662) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenInfo {
    pub(crate) owner: Owner,
    pub(crate) token_type: TokenType,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
}

/// Why a token is not accepted where an access token is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unusable {
    /// Never issued by this server, or revoked.
    Unknown,
    /// Issued, and past its `exp`.
    Expired,
    /// Live, but not an access token (`token_type` `N_A`).
    NotAccessToken,
}

#[derive(Debug)]
struct RefreshToken {
    family: u64,
    /// Rotated out by a refresh under [`RefreshTokenUsage::OneTime`]; presenting it is reuse.
    used: bool,
}

/// The tokens descended from one sign-in.
#[derive(Debug)]
struct Family {
    client_id: String,
    user: String,
    /// The scope granted at sign-in: a refresh may narrow it, never widen it (RFC 6749 §6).
    scope: Option<String>,
    /// Time since the epoch, for the absolute lifetime.
    signed_in_at: Duration,
    /// Time since the epoch of the sign-in or the latest refresh, for the sliding lifetime.
    last_used_at: Duration,
}

/// What a sign-in or a refresh issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issued {
    pub(crate) access_token: String,
    /// The access token's `expires_in`, in whole seconds.
    pub(crate) expires_in: u64,
    /// `None` when a reusable refresh token is not repeated in the response.
    pub(crate) refresh_token: Option<String>,
    pub(crate) scope: Option<String>,
}

/// Why a refresh was refused: every cause answers `invalid_grant`, except a wider scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshError {
    /// Never issued, or revoked.
    Unknown,
    /// Issued to another client.
    OtherClient,
    /// Already rotated out: the family is now revoked.
    Reused,
    Expired(Expired),
    /// The request asked for a scope the sign-in did not grant.
    WiderScope,
}

/// What a revocation request revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// The token is unknown (never issued, already revoked): nothing to do (RFC 7009 §2.2).
    Nothing,
    AccessToken,
    /// A refresh token: its whole family, refresh and access tokens alike.
    Family,
}

/// Revocation refused: the token was issued to another client (RFC 7009 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OtherClient;

#[derive(Debug)]
pub(crate) struct Tokens {
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    families: HashMap<u64, Family>,
    next_family: u64,
    /// Makes token values unpredictable; seeded randomly by the standard library.
    entropy: RandomState,
    serial: u64,
}

impl Tokens {
    pub(crate) fn new() -> Self {
        Self {
            access: HashMap::new(),
            refresh: HashMap::new(),
            families: HashMap::new(),
            next_family: 0,
            entropy: RandomState::new(),
            serial: 0,
        }
    }

    /// `prefix` and 32 hex digits (128 bits) that cannot be guessed from earlier tokens, and that
    /// no other token has.
    fn random_token(&mut self, prefix: &str) -> String {
        loop {
            self.serial += 1;
            let high = self.entropy.hash_one((self.serial, 0u8));
            let low = self.entropy.hash_one((self.serial, 1u8));
            let candidate = format!("{prefix}{high:016x}{low:016x}");
            if !self.access.contains_key(&candidate) && !self.refresh.contains_key(&candidate) {
                return candidate;
            }
        }
    }

    /// Issues an access token (`tk_…`) that lives `lifetime_secs` from `now` (see [`expiry`]).
    pub(crate) fn issue(
        &mut self,
        owner: Owner,
        family: Option<u64>,
        lifetime_secs: u64,
        now: Duration,
    ) -> String {
        let token = self.random_token("tk_");
        self.store(
            token.clone(),
            owner,
            family,
            TokenType::Bearer,
            lifetime_secs,
            now,
        );
        token
    }

    /// Issues an opaque token (`it_…`) with `token_type` `N_A`: not an access token, so neither
    /// the API nor the token endpoint accepts it; only introspection knows it.
    pub(crate) fn issue_not_applicable(
        &mut self,
        owner: Owner,
        lifetime_secs: u64,
        now: Duration,
    ) -> String {
        let token = self.random_token("it_");
        let token_type = TokenType::NotApplicable;
        self.store(token.clone(), owner, None, token_type, lifetime_secs, now);
        token
    }

    /// Issues an access token as a JWT signed with `key`, whose claims say what the store
    /// knows: `iss`, `sub`, `aud` (one string, or an array of several, left out when empty),
    /// `scope`, `client_id`, `iat` and `exp` (whole seconds, see [`expiry`]), `jti`, and `act`
    /// for an exchanged token.
    pub(crate) fn issue_jwt(
        &mut self,
        key: &SigningKey,
        issuer: &str,
        owner: Owner,
        lifetime_secs: u64,
        now: Duration,
    ) -> String {
        let iat = now.as_secs();
        let exp = expiry(now, lifetime_secs);
        let mut claims = json!({
            "iss": issuer,
            "sub": owner.sub,
            "client_id": owner.client_id,
            "iat": iat,
            "exp": exp,
            "jti": self.random_token(""),
        });
        match owner.audience.as_slice() {
            [] => {}
            [audience] => claims["aud"] = audience.as_str().into(),
            audiences => claims["aud"] = audiences.into(),
        }
        if let Some(scope) = &owner.scope {
            claims["scope"] = scope.as_str().into();
        }
        if let Some(actor) = &owner.actor {
            claims["act"] = actor.to_json();
        }
        let token = key.sign(&claims);
        self.store(
            token.clone(),
            owner,
            None,
            TokenType::Bearer,
            lifetime_secs,
            now,
        );
        token
    }

    fn store(
        &mut self,
        token: String,
        owner: Owner,
        family: Option<u64>,
        token_type: TokenType,
        lifetime_secs: u64,
        now: Duration,
    ) {
        let access = AccessToken {
            owner,
            family,
            token_type,
            iat: now.as_secs(),
            exp: expiry(now, lifetime_secs),
        };
        self.access.insert(token, access);
    }

    /// Signs `user` in to `client_id` at `now`: a new family, its first access token and its
    /// first refresh token (`rt_…`).
    pub(crate) fn sign_in(
        &mut self,
        client_id: &str,
        user: &str,
        scope: Option<&str>,
        lifetime_secs: u64,
        now: Duration,
    ) -> Issued {
        let family = self.next_family;
        self.next_family += 1;
        self.families.insert(
            family,
            Family {
                client_id: client_id.to_owned(),
                user: user.to_owned(),
                scope: scope.map(str::to_owned),
                signed_in_at: now,
                last_used_at: now,
            },
        );
        let refresh_token = self.new_refresh_token(family);
        let owner = Owner::user(client_id, user, scope);
        Issued {
            access_token: self.issue(owner, Some(family), lifetime_secs, now),
            expires_in: lifetime_secs.min(MAX_TOKEN_LIFETIME_SECS),
            refresh_token: Some(refresh_token),
            scope: scope.map(str::to_owned),
        }
    }

    fn new_refresh_token(&mut self, family: u64) -> String {
        let token = self.random_token("rt_");
        self.refresh.insert(
            token.clone(),
            RefreshToken {
                family,
                used: false,
            },
        );
        token
    }

    /// The refresh token grant (RFC 6749 §6) for `client_id` at `now`, under `policy`.
    /// `scope` is the requested scope (`None`: the one granted at sign-in).
    pub(crate) fn refresh(
        &mut self,
        client_id: &str,
        token: &str,
        scope: Option<&str>,
        policy: RefreshPolicy,
        lifetime_secs: u64,
        now: Duration,
    ) -> Result<Issued, RefreshError> {
        let presented = self.refresh.get(token).ok_or(RefreshError::Unknown)?;
        let (family_id, used) = (presented.family, presented.used);
        let family = self.families.get(&family_id).ok_or(RefreshError::Unknown)?;
        // Another client's token tells nothing about theft of this family: refuse, change nothing.
        if family.client_id != client_id {
            return Err(RefreshError::OtherClient);
        }
        if used {
            self.revoke_family(family_id);
            return Err(RefreshError::Reused);
        }
        policy
            .lifetimes
            .check(family.signed_in_at, family.last_used_at, now)
            .map_err(RefreshError::Expired)?;
        let scope = match scope {
            Some(requested) if !is_within(requested, family.scope.as_deref()) => {
                return Err(RefreshError::WiderScope);
            }
            Some(requested) => Some(requested.to_owned()),
            None => family.scope.clone(),
        };
        let owner = Owner::user(&family.client_id, &family.user, scope.as_deref());
        if let Some(family) = self.families.get_mut(&family_id) {
            family.last_used_at = now;
        }
        let refresh_token = match policy.usage {
            RefreshTokenUsage::OneTime => {
                if let Some(presented) = self.refresh.get_mut(token) {
                    presented.used = true;
                }
                Some(self.new_refresh_token(family_id))
            }
            RefreshTokenUsage::Reuse => {
                policy.reuse_returns_refresh_token.then(|| token.to_owned())
            }
        };
        Ok(Issued {
            access_token: self.issue(owner, Some(family_id), lifetime_secs, now),
            expires_in: lifetime_secs.min(MAX_TOKEN_LIFETIME_SECS),
            refresh_token,
            scope,
        })
    }

    /// Revokes every refresh and access token of a family.
    fn revoke_family(&mut self, family: u64) {
        self.families.remove(&family);
        self.refresh.retain(|_, token| token.family != family);
        self.access.retain(|_, token| token.family != Some(family));
    }

    /// Revokes `token` for `client_id` (RFC 7009): a refresh token takes its whole family with
    /// it, as most servers do; an access token goes alone. Both kinds are looked up, whatever the
    /// client's `token_type_hint` (RFC 7009 §2.1 lets the server search beyond the hint).
    pub(crate) fn revoke(&mut self, client_id: &str, token: &str) -> Result<Revoked, OtherClient> {
        self.revoke_as(Some(client_id), token)
    }

    /// Revokes `token` whoever it was issued to, as [`revoke`](Self::revoke) would for its
    /// client: for tests, which act as the server's administrator.
    pub(crate) fn revoke_any(&mut self, token: &str) -> Revoked {
        // Without a client to compare, no token belongs to another client.
        self.revoke_as(None, token).unwrap_or(Revoked::Nothing)
    }

    /// Revokes `token` if it belongs to `client_id`, or to anyone when `client_id` is `None`.
    fn revoke_as(&mut self, client_id: Option<&str>, token: &str) -> Result<Revoked, OtherClient> {
        let other_client = |owner: &str| client_id.is_some_and(|client_id| client_id != owner);
        if let Some(refresh) = self.refresh.get(token) {
            let family = refresh.family;
            let Some(owner) = self.families.get(&family).map(|f| f.client_id.as_str()) else {
                return Ok(Revoked::Nothing);
            };
            if other_client(owner) {
                return Err(OtherClient);
            }
            self.revoke_family(family);
            return Ok(Revoked::Family);
        }
        match self.access.get(token) {
            None => Ok(Revoked::Nothing),
            Some(access) if other_client(&access.owner.client_id) => Err(OtherClient),
            Some(_) => {
                self.access.remove(token);
                Ok(Revoked::AccessToken)
            }
        }
    }

    /// Whom an access token belongs to, if it is known, unexpired at `now` and not revoked.
    pub(crate) fn validate(&self, token: &str, now: Duration) -> Option<Owner> {
        self.check_access_token(token, now).ok()
    }

    /// Whom an access token belongs to, or why it cannot be used as one at `now`: the rules of
    /// the protected API, also applied to subject and actor tokens.
    pub(crate) fn check_access_token(&self, token: &str, now: Duration) -> Result<Owner, Unusable> {
        let access = self.access.get(token).ok_or(Unusable::Unknown)?;
        if !is_live(access.exp, now) {
            return Err(Unusable::Expired);
        }
        match access.token_type {
            TokenType::Bearer => Ok(access.owner.clone()),
            TokenType::NotApplicable => Err(Unusable::NotAccessToken),
        }
    }

    /// What introspection says of a token: anything this server issued that is live at `now`
    /// and not revoked, `N_A` tokens included; `None` for the rest (refresh tokens too).
    pub(crate) fn introspect(&self, token: &str, now: Duration) -> Option<TokenInfo> {
        let access = self.access.get(token)?;
        is_live(access.exp, now).then(|| TokenInfo {
            owner: access.owner.clone(),
            token_type: access.token_type,
            iat: access.iat,
            exp: access.exp,
        })
    }

    /// Revokes every token issued so far.
    pub(crate) fn clear(&mut self) {
        self.access.clear();
        self.refresh.clear();
        self.families.clear();
    }
}

/// Whether every scope in `requested` (space-separated, RFC 6749 §3.3) is in `granted`.
fn is_within(requested: &str, granted: Option<&str>) -> bool {
    let granted: HashSet<&str> = granted.unwrap_or("").split(' ').collect();
    requested
        .split(' ')
        .filter(|scope| !scope.is_empty())
        .all(|scope| granted.contains(scope))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::refresh::Lifetimes;

    /// `secs` whole seconds and `millis` milliseconds after the epoch.
    fn at(secs: u64, millis: u64) -> Duration {
        Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn a_token_issued_late_in_a_second_dies_at_the_next_whole_second() {
        // Issued at 1000.9 for 1 s: exp is 1001, so the token dies 0.1 s after issue, not 1 s.
        let exp = expiry(at(1000, 900), 1);
        assert_eq!(exp, 1001);
        assert!(is_live(exp, at(1000, 900)));
        assert!(is_live(exp, at(1000, 999)));
        assert!(!is_live(exp, at(1001, 0)));
        assert!(!is_live(exp, at(1001, 500)));
    }

    #[test]
    fn a_token_issued_on_a_whole_second_lives_its_full_lifetime() {
        let exp = expiry(at(1000, 0), 60);
        assert_eq!(exp, 1060);
        assert!(is_live(exp, at(1059, 999)));
        assert!(!is_live(exp, at(1060, 0)));
    }

    #[test]
    fn a_zero_lifetime_token_is_never_live() {
        let issued_at = at(1000, 0);
        assert!(!is_live(expiry(issued_at, 0), issued_at));
        assert!(!is_live(expiry(at(1000, 999), 0), at(1000, 999)));
    }

    #[test]
    fn absurd_lifetimes_are_capped_instead_of_overflowing() {
        let exp = expiry(at(1000, 0), u64::MAX);
        assert_eq!(exp, 1000 + MAX_TOKEN_LIFETIME_SECS);
        assert_eq!(expiry(Duration::MAX, u64::MAX), u64::MAX);
    }

    fn policy(usage: RefreshTokenUsage, sliding: Option<Duration>) -> RefreshPolicy {
        RefreshPolicy {
            usage,
            reuse_returns_refresh_token: true,
            lifetimes: Lifetimes {
                absolute: Duration::from_secs(3600),
                sliding,
            },
        }
    }

    #[test]
    fn rotation_then_reuse_revokes_the_whole_family() {
        let mut tokens = Tokens::new();
        let one_time = policy(RefreshTokenUsage::OneTime, None);
        let first = tokens.sign_in("web", "ann", Some("a b"), 60, at(1000, 0));
        let old = first.refresh_token.clone().unwrap();
        let second = tokens
            .refresh("web", &old, None, one_time, 60, at(1010, 0))
            .unwrap();
        let new = second.refresh_token.clone().unwrap();
        assert_ne!(old, new);
        assert_eq!(second.scope.as_deref(), Some("a b"));
        // An unrelated family of the same user survives.
        let other = tokens.sign_in("web", "ann", None, 60, at(1010, 0));

        assert_eq!(
            tokens.refresh("web", &old, None, one_time, 60, at(1020, 0)),
            Err(RefreshError::Reused)
        );
        for access in [&first.access_token, &second.access_token] {
            assert_eq!(tokens.validate(access, at(1020, 0)), None);
        }
        assert_eq!(
            tokens.refresh("web", &new, None, one_time, 60, at(1020, 0)),
            Err(RefreshError::Unknown)
        );
        let owner = tokens.validate(&other.access_token, at(1020, 0)).unwrap();
        assert_eq!(owner.user.as_deref(), Some("ann"));
        assert!(
            tokens
                .refresh(
                    "web",
                    other.refresh_token.as_deref().unwrap(),
                    None,
                    one_time,
                    60,
                    at(1020, 0)
                )
                .is_ok()
        );
    }

    #[test]
    fn reusable_refresh_tokens_are_repeated_or_omitted() {
        let mut tokens = Tokens::new();
        let mut reuse = policy(RefreshTokenUsage::Reuse, None);
        let signed_in = tokens.sign_in("web", "ann", None, 60, at(1000, 0));
        let token = signed_in.refresh_token.unwrap();
        for _ in 0..3 {
            let issued = tokens
                .refresh("web", &token, None, reuse, 60, at(1001, 0))
                .unwrap();
            assert_eq!(issued.refresh_token.as_deref(), Some(token.as_str()));
        }
        reuse.reuse_returns_refresh_token = false;
        let issued = tokens
            .refresh("web", &token, None, reuse, 60, at(1002, 0))
            .unwrap();
        assert_eq!(issued.refresh_token, None);
        assert!(tokens.validate(&issued.access_token, at(1002, 0)).is_some());
    }

    #[test]
    fn another_client_cannot_use_or_revoke_a_users_tokens() {
        let mut tokens = Tokens::new();
        let one_time = policy(RefreshTokenUsage::OneTime, None);
        let signed_in = tokens.sign_in("web", "ann", None, 60, at(1000, 0));
        let refresh = signed_in.refresh_token.unwrap();
        assert_eq!(
            tokens.refresh("mobile", &refresh, None, one_time, 60, at(1001, 0)),
            Err(RefreshError::OtherClient)
        );
        assert_eq!(tokens.revoke("mobile", &refresh), Err(OtherClient));
        assert_eq!(
            tokens.revoke("mobile", &signed_in.access_token),
            Err(OtherClient)
        );
        // Nothing changed: the owner can still refresh.
        assert!(
            tokens
                .refresh("web", &refresh, None, one_time, 60, at(1001, 0))
                .is_ok()
        );
    }

    #[test]
    fn expired_families_are_refused_with_the_lifetime_they_outlived() {
        let mut tokens = Tokens::new();
        let sliding = policy(RefreshTokenUsage::Reuse, Some(Duration::from_secs(300)));
        let refresh = tokens
            .sign_in("web", "ann", None, 60, at(1000, 0))
            .refresh_token
            .unwrap();
        // Each use slides the window on: 1250, 1500, 1750 ... until the absolute end at 4600.
        for t in [1250, 1500, 1750] {
            assert!(
                tokens
                    .refresh("web", &refresh, None, sliding, 60, at(t, 0))
                    .is_ok()
            );
        }
        assert_eq!(
            tokens.refresh("web", &refresh, None, sliding, 60, at(2050, 0)),
            Err(RefreshError::Expired(Expired::Sliding))
        );
        assert_eq!(
            tokens.refresh("web", &refresh, None, sliding, 60, at(4600, 0)),
            Err(RefreshError::Expired(Expired::Absolute))
        );
    }

    #[test]
    fn a_refresh_may_narrow_the_scope_but_not_widen_it() {
        let mut tokens = Tokens::new();
        let reuse = policy(RefreshTokenUsage::Reuse, None);
        let refresh = tokens
            .sign_in("web", "ann", Some("read write"), 60, at(1000, 0))
            .refresh_token
            .unwrap();
        let narrow = tokens
            .refresh("web", &refresh, Some("read"), reuse, 60, at(1001, 0))
            .unwrap();
        assert_eq!(narrow.scope.as_deref(), Some("read"));
        let owner = tokens.validate(&narrow.access_token, at(1001, 0)).unwrap();
        assert_eq!(owner.scope.as_deref(), Some("read"));
        // The sign-in's scope stays available to later refreshes.
        let full = tokens
            .refresh("web", &refresh, None, reuse, 60, at(1002, 0))
            .unwrap();
        assert_eq!(full.scope.as_deref(), Some("read write"));
        assert_eq!(
            tokens.refresh("web", &refresh, Some("read admin"), reuse, 60, at(1003, 0)),
            Err(RefreshError::WiderScope)
        );
        // Nothing granted at sign-in: any scope is wider.
        let bare = tokens
            .sign_in("web", "bob", None, 60, at(1000, 0))
            .refresh_token
            .unwrap();
        assert_eq!(
            tokens.refresh("web", &bare, Some("read"), reuse, 60, at(1001, 0)),
            Err(RefreshError::WiderScope)
        );
    }

    #[test]
    fn revoking_an_access_token_leaves_its_family_alone() {
        let mut tokens = Tokens::new();
        let signed_in = tokens.sign_in("web", "ann", None, 60, at(1000, 0));
        assert_eq!(
            tokens.revoke("web", &signed_in.access_token),
            Ok(Revoked::AccessToken)
        );
        assert_eq!(tokens.validate(&signed_in.access_token, at(1000, 0)), None);
        let refresh = signed_in.refresh_token.unwrap();
        let one_time = policy(RefreshTokenUsage::OneTime, None);
        let next = tokens
            .refresh("web", &refresh, None, one_time, 60, at(1001, 0))
            .unwrap();
        // Revoking a used refresh token still revokes its family.
        assert_eq!(tokens.revoke("web", &refresh), Ok(Revoked::Family));
        assert_eq!(tokens.validate(&next.access_token, at(1001, 0)), None);
        assert_eq!(tokens.revoke("web", &refresh), Ok(Revoked::Nothing));
        assert_eq!(tokens.revoke("web", "tk_unknown"), Ok(Revoked::Nothing));
    }

    #[test]
    fn access_token_checks_say_why_a_token_is_unusable() {
        let mut tokens = Tokens::new();
        let owner = Owner::user("web", "ann", Some("a"));
        let live = tokens.issue(owner.clone(), None, 60, at(1000, 0));
        assert_eq!(
            tokens.check_access_token(&live, at(1059, 999)),
            Ok(owner.clone())
        );
        assert_eq!(
            tokens.check_access_token(&live, at(1060, 0)),
            Err(Unusable::Expired)
        );
        assert_eq!(
            tokens.check_access_token("tk_unknown", at(1000, 0)),
            Err(Unusable::Unknown)
        );
        let id_token = tokens.issue_not_applicable(owner.clone(), 60, at(1000, 0));
        assert!(id_token.starts_with("it_"), "{id_token}");
        assert_eq!(
            tokens.check_access_token(&id_token, at(1000, 0)),
            Err(Unusable::NotAccessToken)
        );
        assert_eq!(tokens.validate(&id_token, at(1000, 0)), None);
        // Introspection knows both while they live, and neither afterwards.
        let info = tokens.introspect(&id_token, at(1000, 500)).unwrap();
        assert_eq!(info.token_type, TokenType::NotApplicable);
        assert_eq!((info.iat, info.exp), (1000, 1060));
        assert_eq!(
            tokens.introspect(&live, at(1001, 0)).unwrap().token_type,
            TokenType::Bearer
        );
        assert_eq!(tokens.introspect(&live, at(1060, 0)), None);
        // Refresh tokens are not introspected.
        let refresh = tokens
            .sign_in("web", "ann", None, 60, at(1000, 0))
            .refresh_token
            .unwrap();
        assert_eq!(tokens.introspect(&refresh, at(1000, 0)), None);
    }

    #[test]
    fn jwts_carry_the_owner_as_claims_and_are_stored_like_any_access_token() {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;

        let claims_of = |token: &str| -> Value {
            let payload = token.split('.').nth(1).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
        };
        let mut tokens = Tokens::new();
        let key = SigningKey::random();
        let mut owner = Owner::user("web-app", "ann", Some("api1"));
        owner.audience.push("api1".to_owned());
        let token = tokens.issue_jwt(&key, "https://idp", owner.clone(), 60, at(1000, 700));
        let claims = claims_of(&token);
        assert_eq!(claims["iss"], "https://idp");
        assert_eq!(claims["sub"], "ann");
        assert_eq!(claims["aud"], "api1");
        assert_eq!(claims["scope"], "api1");
        assert_eq!(claims["client_id"], "web-app");
        assert_eq!(claims["iat"], 1000);
        assert_eq!(claims["exp"], 1060);
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
        assert!(claims.get("act").is_none());
        assert_eq!(tokens.validate(&token, at(1059, 0)), Some(owner.clone()));
        assert_eq!(tokens.validate(&token, at(1060, 0)), None);

        // Several audiences are an array; an actor is an `act` claim; no scope, no claim.
        let exchanged = Owner {
            client_id: "api1".to_owned(),
            audience: vec!["api2".to_owned(), "https://api2.example/".to_owned()],
            scope: None,
            actor: Some(Actor {
                sub: "api1".to_owned(),
                prior: None,
            }),
            ..owner
        };
        let claims = claims_of(&tokens.issue_jwt(&key, "https://idp", exchanged, 60, at(1000, 0)));
        assert_eq!(claims["aud"], json!(["api2", "https://api2.example/"]));
        assert_eq!(claims["act"], json!({ "sub": "api1" }));
        assert_eq!(claims["client_id"], "api1");
        assert!(claims.get("scope").is_none());
    }

    #[test]
    fn revoke_any_ignores_the_owner_and_takes_families_along() {
        let mut tokens = Tokens::new();
        let signed_in = tokens.sign_in("web", "ann", None, 60, at(1000, 0));
        let client = tokens.issue(Owner::client("svc", None), None, 60, at(1000, 0));
        assert_eq!(tokens.revoke_any(&client), Revoked::AccessToken);
        assert_eq!(tokens.validate(&client, at(1000, 0)), None);
        let refresh = signed_in.refresh_token.unwrap();
        assert_eq!(tokens.revoke_any(&refresh), Revoked::Family);
        assert_eq!(tokens.validate(&signed_in.access_token, at(1000, 0)), None);
        assert_eq!(tokens.revoke_any(&refresh), Revoked::Nothing);
        assert_eq!(tokens.revoke_any("tk_unknown"), Revoked::Nothing);
    }

    #[test]
    fn scope_containment() {
        assert!(is_within("a", Some("a b")));
        assert!(is_within("b a", Some("a b")));
        assert!(is_within("a  b", Some("a b")));
        assert!(!is_within("a c", Some("a b")));
        assert!(!is_within("a", None));
        assert!(!is_within("ab", Some("a b")));
    }
}
