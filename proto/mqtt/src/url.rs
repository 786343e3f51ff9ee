//! Broker addresses: `mqtt://host:port` and its spellings.

/// Host and port of an MQTT broker, from `mqtt://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Name or address, without brackets for IPv6.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://` (or `ssl://`): MQTT over TLS.
    pub tls: bool,
}

/// A broker url that cannot be used, quoting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not one of the four schemes.
    #[error("`{0}` must start with mqtt://, tcp://, mqtts:// or ssl://")]
    Scheme(String),
    /// The port is not a number from 1 to 65535.
    #[error("`{url}`: port `{port}` is not a number from 1 to 65535")]
    Port {
        /// The url.
        url: String,
        /// The port as written.
        port: String,
    },
    /// No host, or port 0.
    #[error("`{0}` needs a host and a non-zero port")]
    Address(String),
}

impl BrokerUrl {
    /// A plain TCP address.
    pub fn tcp(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            tls: false,
        }
    }

    /// Parses `mqtt://` or `tcp://` (plain, port 1883 by default) and
    /// `mqtts://` or `ssl://` (TLS, port 8883 by default); a trailing `/`
    /// is allowed, an IPv6 host is written in brackets.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("mqtts://") {
            (r, true)
        } else if let Some(r) = url.strip_prefix("ssl://") {
            (r, true)
        } else {
            let r = url
                .strip_prefix("mqtt://")
                .or_else(|| url.strip_prefix("tcp://"))
                .ok_or_else(|| UrlError::Scheme(url.to_string()))?;
            (r, false)
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>().map_err(|_| UrlError::Port {
                    url: url.to_string(),
                    port: p.to_string(),
                })?,
            ),
            None if tls => (rest, 8883),
            None => (rest, 1883),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(UrlError::Address(url.to_string()));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl From<std::net::SocketAddr> for BrokerUrl {
    /// The plain address a client uses for a listener on `addr`; a
    /// wildcard listener (`0.0.0.0`, `::`) is reached on loopback.
    fn from(addr: std::net::SocketAddr) -> Self {
        let host = match addr.ip().is_unspecified() {
            true => "127.0.0.1".to_string(),
            false => addr.ip().to_string(),
        };
        Self::tcp(host, addr.port())
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        match self.host.contains(':') {
            true => write!(f, "{scheme}://[{}]:{}", self.host, self.port),
            false => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_schemes_default_to_8883_and_print_as_mqtts() {
        let tls = BrokerUrl::parse("ssl://broker.example").expect("url");
        assert!(tls.tls);
        assert_eq!(tls.port, 8883);
        assert_eq!(tls.to_string(), "mqtts://broker.example:8883");
        let v6 = BrokerUrl::parse("mqtt://[fe80::1]:1884").expect("url");
        assert_eq!(v6.to_string(), "mqtt://[fe80::1]:1884");
    }

    #[test]
    fn each_mistake_has_its_error() {
        assert!(matches!(
            BrokerUrl::parse("http://x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://x:99999"),
            Err(UrlError::Port { .. })
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtts://x:0"),
            Err(UrlError::Address(_))
        ));
    }

    #[test]
    fn a_wildcard_listener_is_reached_on_loopback() {
        let wildcard = std::net::SocketAddr::from(([0, 0, 0, 0], 1884));
        assert_eq!(BrokerUrl::from(wildcard), BrokerUrl::tcp("127.0.0.1", 1884));
        let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 1885));
        assert_eq!(BrokerUrl::from(v6), BrokerUrl::tcp("::1", 1885));
    }
}
