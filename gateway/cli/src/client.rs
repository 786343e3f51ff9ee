//! The CLI's side of the API: `eddy ota deploy` and `eddy ota status`
//! talk to a running gateway over HTTP (the store file belongs to the
//! gateway while it runs), with a token from [`TokenArgs`].

use std::path::{Path, PathBuf};

use hyper::Method;

use eddy_gateway::auth::{ADMIN_TOKEN_FILE, read_token_file};
use eddy_gateway::campaign::api::{Detail, Summary};
use eddy_gateway::client::encode;
pub use eddy_gateway::client::{Client, ClientError};
use eddy_gateway::config::Config;

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

/// Where the CLI finds its API token, first found wins: `--token-file`,
/// `$EDDY_TOKEN`, then `DATA_DIR/admin.token` of `--config` (or of the
/// default config: `eddy-data/admin.token`), which the gateway writes at
/// its first start, so the CLI on the gateway's machine needs no set-up.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TokenArgs {
    /// A file holding an API token (its first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The gateway's config file, for its `DATA_DIR/admin.token`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The environment variable holding an API token.
pub const TOKEN_ENV: &str = "EDDY_TOKEN";

/// Why no token could be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] eddy_gateway::config::ConfigError),
}

impl TokenArgs {
    /// The token to send; `None` when there is none to be found (the
    /// gateway then answers 401 and says where tokens come from).
    pub fn token(&self) -> Result<Option<String>, TokenError> {
        let read = |path: &Path| {
            read_token_file(path).map_err(|source| TokenError::File {
                path: path.to_path_buf(),
                source,
            })
        };
        if let Some(path) = &self.token_file {
            return read(path).map(Some);
        }
        if let Ok(token) = std::env::var(TOKEN_ENV)
            && !token.trim().is_empty()
        {
            return Ok(Some(token.trim().to_string()));
        }
        let data_dir = match &self.config {
            Some(path) => Config::load(path)?.data_dir,
            None => Config::default().data_dir,
        };
        let path = data_dir.join(ADMIN_TOKEN_FILE);
        match read(&path) {
            Ok(token) => Ok(Some(token)),
            // No file: the gateway says what is missing.
            Err(TokenError::File { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && self.config.is_none() =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
