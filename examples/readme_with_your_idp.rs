//! tokenwarden against your own authorization server (IdP) and API: the manager gets a token
//! with the client-credentials grant, caches it and renews it; the layer puts it on a GET to
//! your API. Run it with the four settings it reads from the environment (and `SCOPE` as well if
//! your server wants a scope):
//!
//! ```sh
//! TOKEN_ENDPOINT=https://idp.example.com/oauth2/token \
//! CLIENT_ID=billing-svc CLIENT_SECRET=... \
//! API_URL=https://billing.internal.example.com/invoices \
//! cargo run --example readme_with_your_idp  # in a package of your own: cargo run
//! ```

use std::error::Error;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokenwarden::{AccessTokenLayer, ClientConfig, ClientCredentials, TokenManager};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // What failed, then each cause on its own line.
            eprintln!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error + Send + Sync>> {
    let token_endpoint = setting(
        "TOKEN_ENDPOINT",
        "your IdP's token endpoint, e.g. https://idp.example.com/oauth2/token",
    )?;
    let client_id = setting("CLIENT_ID", "the client id your IdP knows this service by")?;
    let client_secret = setting("CLIENT_SECRET", "that client's secret")?;
    let api_url: http::Uri = setting(
        "API_URL",
        "a URL of your API that wants the token, e.g. https://billing.internal.example.com/invoices",
    )?
    .parse()
    .map_err(|error| format!("API_URL is not a URL: {error}"))?;

    // The client as the authorization server knows it...
    let idp = ClientConfig::builder(&token_endpoint, &client_id)
        .client_secret(client_secret)
        .build()?;
    // ...and the grant it gets its tokens with.
    let mut grant = ClientCredentials::new(idp);
    if let Ok(scope) = std::env::var("SCOPE") {
        grant = grant.scope(&scope);
    }
    let manager = TokenManager::builder().client("api", grant).build()?;

    // Tokens go to the API's origin (scheme, host and port) and nowhere else.
    let origin = match (api_url.scheme_str(), api_url.authority()) {
        (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
        _ => return Err(format!("API_URL must be an absolute URL, not `{api_url}`").into()),
    };
    // hyper-util's client with rustls (https and http); any `Service<http::Request<B>>` works.
    let http = tokenwarden::https_client::<Full<Bytes>>()?;
    let client = ServiceBuilder::new()
        .layer(
            AccessTokenLayer::builder(&manager, "api")
                .allow_origin(&origin)
                .build()?,
        )
        .service(http);

    let request = http::Request::get(api_url).body(Full::default())?;
    let response = client.oneshot(request).await?; // Authorization: Bearer … added here
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("{status}");
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

/// The environment variable `name`, or an error that says what to set it to.
fn setting(name: &str, what: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("set {name} to {what}"))
}
