//! Route: which messages are telemetry, in which format, from which
//! device. Input: an MQTT topic. Output: a [`Route`]: the device id, the
//! metric a topic names, the decoder of the payload, and the hierarchy
//! path the topic carries.

use std::borrow::Cow;

use crate::config::{IngestConfig, PayloadFormat, TopicMapping};
use crate::decode::{Decoder, LineSpec, TimeSpec, time};

/// Which messages are telemetry, in which format, from which device.
#[derive(Debug, Clone)]
pub struct Router {
    prefix: String,
    /// Eddy topics: frames or JSON with the default time key.
    eddy: Decoder,
    mappings: Vec<Mapping>,
}

#[derive(Debug, Clone)]
struct Mapping {
    filter: Vec<String>,
    decoder: Decoder,
    device: Vec<usize>,
    metric: Option<usize>,
    path: Vec<usize>,
}

/// Where a message goes.
#[derive(Debug)]
pub struct Route<'r, 't> {
    /// The device id: one topic level, or several joined with `.`.
    pub device: Cow<'t, str>,
    /// The metric the topic names (plain values).
    pub metric: Option<&'t str>,
    /// The hierarchy path the mapping's `path_levels` read (`site/line`).
    pub path: Option<String>,
    pub decoder: &'r Decoder,
}

impl Router {
    /// The routes of `config`, already validated (an unknown time zone
    /// falls back to UTC here).
    pub fn new(config: &IngestConfig) -> Self {
        let decoder = |format| Decoder {
            max_payload: config.max_payload_bytes,
            ..Decoder::new(format)
        };
        Self {
            prefix: config.topic_prefix.clone(),
            eddy: decoder(PayloadFormat::Auto),
            mappings: config
                .topics
                .iter()
                .map(|m: &TopicMapping| Mapping {
                    filter: m.filter.split('/').map(String::from).collect(),
                    decoder: Decoder {
                        time: TimeSpec {
                            key: m.time_key.clone().unwrap_or_else(|| "ts".into()),
                            zone: m
                                .timezone
                                .as_deref()
                                .and_then(|z| time::zone(z).ok())
                                .unwrap_or(jiff::tz::TimeZone::UTC),
                        },
                        line: LineSpec {
                            device_tag: m.device_tag.clone(),
                            path_tags: m.path_tags.clone(),
                            precision: m.precision.unwrap_or_default(),
                        },
                        ..decoder(m.format)
                    },
                    device: m
                        .device_level
                        .as_ref()
                        .map_or_else(Vec::new, |l| l.levels().to_vec()),
                    metric: m.metric_level,
                    path: m.path_levels.clone(),
                })
                .collect(),
        }
    }

    /// Where a message on `topic` goes, if any mapping claims it.
    pub fn route<'r, 't>(&'r self, topic: &'t str) -> Option<Route<'r, 't>> {
        if let Some((device, leaf)) = eddy_proto::topic::split_device_topic(&self.prefix, topic)
            && leaf == eddy_proto::topic::TELEMETRY
        {
            return Some(Route {
                device: Cow::Borrowed(device),
                metric: None,
                path: None,
                decoder: &self.eddy,
            });
        }
        let levels: Vec<&'t str> = topic.split('/').collect();
        let m = self.mappings.iter().find(|m| matches(&m.filter, &levels))?;
        let device = match m.device.as_slice() {
            // Line protocol whose lines name their devices.
            [] => Cow::Borrowed(""),
            [one] => Cow::Borrowed(*levels.get(*one)?),
            several => {
                let parts: Option<Vec<&str>> =
                    several.iter().map(|&l| levels.get(l).copied()).collect();
                Cow::Owned(parts?.join("."))
            }
        };
        let path = match m.path.is_empty() {
            true => None,
            false => {
                let parts: Option<Vec<&str>> =
                    m.path.iter().map(|&i| levels.get(i).copied()).collect();
                Some(parts?.join("/"))
            }
        };
        Some(Route {
            device,
            metric: m.metric.and_then(|l| levels.get(l).copied()),
            path,
            decoder: &m.decoder,
        })
    }
}

fn matches(filter: &[String], levels: &[&str]) -> bool {
    for (i, f) in filter.iter().enumerate() {
        match f.as_str() {
            "#" => return true,
            "+" if i < levels.len() => {}
            f if levels.get(i) == Some(&f) => {}
            _ => return false,
        }
    }
    filter.len() == levels.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn routes_eddy_topics_and_configured_mappings() {
        let config = Config::parse(
            r#"
            [[ingest.topics]]
            filter = "tele/+/SENSOR"
            format = "json"
            device_level = 1
            [[ingest.topics]]
            filter = "zigbee2mqtt/+/#"
            format = "json"
            device_level = 1
            "#,
        )
        .expect("valid");
        let router = Router::new(&config.ingest);
        let route = |topic| {
            router
                .route(topic)
                .map(|r| (r.device.into_owned(), r.decoder.format))
        };
        assert_eq!(
            route("eddy/v1/d1/telemetry"),
            Some(("d1".into(), PayloadFormat::Auto))
        );
        assert_eq!(
            route("tele/plug-3/SENSOR"),
            Some(("plug-3".into(), PayloadFormat::Json))
        );
        assert_eq!(
            route("zigbee2mqtt/bulb/state/x"),
            Some(("bulb".into(), PayloadFormat::Json))
        );
        assert_eq!(route("eddy/v1/d1/status"), None);
        assert_eq!(route("tele/plug-3/STATE"), None);
        assert_eq!(route("tele/plug-3/SENSOR/extra"), None);
        assert_eq!(
            router.route("tele/plug-3/SENSOR").and_then(|r| r.path),
            None
        );
        let config = Config::parse(
            r#"
            [[ingest.topics]]
            filter = "factory/+/+/+/data"
            format = "json"
            device_level = 3
            path_levels = [1, 2]
            "#,
        )
        .expect("valid");
        let router = Router::new(&config.ingest);
        let r = router
            .route("factory/plant-1/line-4/press-2/data")
            .expect("routed");
        assert_eq!(r.device, "press-2");
        assert_eq!(r.path.as_deref(), Some("plant-1/line-4"));
    }

    #[test]
    fn plain_values_name_device_and_metric_by_topic_levels() {
        let config = Config::parse(
            r#"
            [[ingest.topics]]
            filter = "home/+/+/+/state"
            format = "value"
            device_level = [1, 2]
            metric_level = 3
            "#,
        )
        .expect("valid");
        let router = Router::new(&config.ingest);
        let r = router
            .route("home/kitchen/plug/power/state")
            .expect("routed");
        assert_eq!(
            (r.device.as_ref(), r.metric),
            ("kitchen.plug", Some("power"))
        );
        assert_eq!(r.decoder.format, PayloadFormat::Value);
    }
}
