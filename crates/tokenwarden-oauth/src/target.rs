//! What a token is asked for (scope, resources, audience, extra parameters): configured once
//! per grant, replaceable per request by [`TokenParams`], and shared by the grants that take
//! these parameters.

use tokenwarden_core::{CacheKeyBuilder, TokenParams};

use crate::{Error, Form};

/// Form parameters the library sets itself; an extra parameter may not use these names, so a
/// configuration value cannot smuggle a second `grant_type` or client identity into a request.
pub(crate) const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
    "resource",
    "audience",
];

/// How extra parameters' values go into a cache key.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ParamsInKey {
    /// As they are: readable keys, for values that are plain configuration.
    Plain,
    /// As SHA-256 digests, for grants whose parameters may be secrets.
    Hashed,
}

/// A grant's configured scope, resources, audience and extra parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) scopes: Vec<String>,
    pub(crate) resources: Vec<String>,
    /// `audience` values (RFC 8693 allows several; most grants take one).
    pub(crate) audiences: Vec<String>,
    pub(crate) params: Vec<(String, String)>,
}

impl Target {
    pub(crate) fn add_scope(&mut self, scope: &str) {
        self.scopes
            .extend(scope.split_ascii_whitespace().map(str::to_owned));
    }

    pub(crate) fn set_param(&mut self, name: &str, value: &str) {
        self.params.retain(|(n, _)| n != name);
        self.params.push((name.to_owned(), value.to_owned()));
    }

    /// Checks the configured values; `reserved` are further names a grant sets itself.
    pub(crate) fn validate(&self, reserved: &[&str]) -> Result<(), Error> {
        for scope in &self.scopes {
            check_scope(scope)?;
        }
        for resource in &self.resources {
            check_resource(resource)?;
        }
        for (name, _) in &self.params {
            check_param_name(name, reserved)?;
        }
        Ok(())
    }

    /// Adds scope, resources, audience and extra parameters, each replaced by the request's
    /// override when it has one.
    pub(crate) fn write(
        &self,
        params: &TokenParams,
        reserved: &[&str],
        form: &mut Form,
    ) -> Result<(), Error> {
        let scopes = match params.scopes() {
            Some(overridden) => {
                for scope in overridden {
                    check_scope(scope)?;
                }
                overridden
            }
            None => &self.scopes,
        };
        if !scopes.is_empty() {
            form.push("scope", &scopes.join(" "));
        }
        let resources = match params.resources() {
            Some(overridden) => {
                for resource in overridden {
                    check_resource(resource)?;
                }
                overridden
            }
            None => &self.resources,
        };
        for resource in resources {
            form.push("resource", resource);
        }
        match params.audience_override() {
            Some(audience) => form.push("audience", audience),
            None => {
                for audience in &self.audiences {
                    form.push("audience", audience);
                }
            }
        }
        let overrides = params.extra_params();
        for (name, _) in overrides {
            check_param_name(name, reserved)?;
        }
        for (name, value) in &self.params {
            if !overrides.iter().any(|(n, _)| n == name) {
                form.push(name, value);
            }
        }
        for (name, value) in overrides {
            form.push(name, value);
        }
        Ok(())
    }

    /// The key parts of what [`write`](Self::write) sends.
    pub(crate) fn cache_key(
        &self,
        params: &TokenParams,
        key: CacheKeyBuilder,
        values: ParamsInKey,
    ) -> CacheKeyBuilder {
        let scopes = params.scopes().unwrap_or(&self.scopes);
        let resources = params.resources().unwrap_or(&self.resources);
        let mut key = key.scopes(scopes).resources(resources);
        match params.audience_override() {
            Some(audience) => key = key.part("audience", audience),
            None => {
                for audience in &self.audiences {
                    key = key.part("audience", audience);
                }
            }
        }
        let overrides = params.extra_params();
        let configured = self
            .params
            .iter()
            .filter(|(name, _)| !overrides.iter().any(|(n, _)| n == name));
        for (name, value) in configured.chain(overrides) {
            let name = format!("param.{name}");
            key = match values {
                ParamsInKey::Plain => key.part(&name, value),
                ParamsInKey::Hashed => key.hashed_part(&name, value),
            };
        }
        key
    }
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
pub(crate) fn check_scope(scope: &str) -> Result<(), Error> {
    let valid = !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if valid {
        Ok(())
    } else {
        Err(Error::config(format!("{scope:?} is not a valid scope")))
    }
}

/// RFC 8707 §2: a resource is an absolute URI without a fragment.
pub(crate) fn check_resource(resource: &str) -> Result<(), Error> {
    let absolute = resource.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if !absolute {
        return Err(Error::config(format!(
            "resource {resource:?} is not an absolute URI"
        )));
    }
    if resource.contains('#') {
        return Err(Error::config(format!(
            "resource {resource:?} must not contain a fragment"
        )));
    }
    Ok(())
}

pub(crate) fn check_param_name(name: &str, reserved: &[&str]) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::config("an extra parameter has an empty name"));
    }
    if RESERVED_PARAMS.contains(&name) || reserved.contains(&name) {
        return Err(Error::config(format!(
            "extra parameter {name:?} is set by the library; use the dedicated setting"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn configured() -> Target {
        let mut target = Target::default();
        target.add_scope("read write");
        target.resources.push("https://api.example.com/".into());
        target.audiences = vec!["api".into()];
        target.set_param("tenant", "t1");
        target.set_param("region", "eu");
        target
    }

    #[test]
    fn the_configuration_is_sent_unless_overridden() {
        let mut form = Form::default();
        configured()
            .write(&TokenParams::new(), &[], &mut form)
            .unwrap();
        assert_eq!(
            form.pairs(),
            [
                ("scope", "read write"),
                ("resource", "https://api.example.com/"),
                ("audience", "api"),
                ("tenant", "t1"),
                ("region", "eu"),
            ]
        );
        let params = TokenParams::new()
            .scope("admin")
            .resource("https://a.example/")
            .resource("https://b.example/")
            .audience("other")
            .param("tenant", "t2")
            .param("extra", "x");
        let mut form = Form::default();
        configured().write(&params, &[], &mut form).unwrap();
        assert_eq!(
            form.pairs(),
            [
                ("scope", "admin"),
                ("resource", "https://a.example/"),
                ("resource", "https://b.example/"),
                ("audience", "other"),
                ("region", "eu"),
                ("tenant", "t2"),
                ("extra", "x"),
            ]
        );
    }

    #[test]
    fn invalid_values_are_config_errors() {
        for params in [
            TokenParams::new().param("grant_type", "password"),
            TokenParams::new().param("client_secret", "x"),
            TokenParams::new().param("own", "x"),
            TokenParams::new().resource("not a uri"),
            TokenParams::new().scope("bad\\scope"),
        ] {
            let err = configured()
                .write(&params, &["own"], &mut Form::default())
                .unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
        for bad in ["a\"b", "caf\u{e9}"] {
            let mut target = Target::default();
            target.add_scope(bad);
            assert!(target.validate(&[]).is_err(), "{bad}");
        }
        for bad in ["/relative", "https://a/#frag"] {
            let mut target = Target::default();
            target.resources.push(bad.into());
            assert!(target.validate(&[]).is_err(), "{bad}");
        }
        for reserved in RESERVED_PARAMS.iter().chain([&""]) {
            let mut target = Target::default();
            target.set_param(reserved, "x");
            assert!(target.validate(&[]).is_err(), "{reserved}");
        }
    }
}
