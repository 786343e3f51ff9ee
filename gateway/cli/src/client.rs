//! The CLI's side of the campaigns API: `eddy ota deploy` and
//! `eddy ota status` talk to a running gateway over HTTP (the store file
//! belongs to the gateway while it runs).

use hyper::Method;

use eddy_gateway::campaign::api::{Detail, Summary};
pub use eddy_gateway::client::{Client, ClientError};

/// The campaigns API of a running gateway, on its HTTP client.
pub trait Campaigns {
    /// Creates a campaign of `image` for the devices `selector` matches.
    fn deploy(
        &self,
        image: Vec<u8>,
        selector: &str,
        canary: &str,
        stages: &str,
        max_failures: &str,
    ) -> impl Future<Output = Result<Detail, ClientError>> + Send;

    /// Every campaign, newest last.
    fn campaigns(&self) -> impl Future<Output = Result<Vec<Summary>, ClientError>> + Send;

    /// One campaign with every device's state.
    fn campaign(&self, id: u32) -> impl Future<Output = Result<Detail, ClientError>> + Send;

    /// Stops a campaign from starting further devices.
    fn halt(&self, id: u32) -> impl Future<Output = Result<Detail, ClientError>> + Send;
}

impl Campaigns for Client {
    async fn deploy(
        &self,
        image: Vec<u8>,
        selector: &str,
        canary: &str,
        stages: &str,
        max_failures: &str,
    ) -> Result<Detail, ClientError> {
        let path = format!(
            "/api/ota/campaigns?devices={}&canary={}&stages={}&max_failures={}",
            encode(selector),
            encode(canary),
            encode(stages),
            encode(max_failures)
        );
        self.json(Method::POST, &path, image).await
    }

    async fn campaigns(&self) -> Result<Vec<Summary>, ClientError> {
        self.json(Method::GET, "/api/ota/campaigns", Vec::new())
            .await
    }

    async fn campaign(&self, id: u32) -> Result<Detail, ClientError> {
        self.json(Method::GET, &format!("/api/ota/campaigns/{id}"), Vec::new())
            .await
    }

    async fn halt(&self, id: u32) -> Result<Detail, ClientError> {
        self.json(
            Method::POST,
            &format!("/api/ota/campaigns/{id}/halt"),
            Vec::new(),
        )
        .await
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
