//! Route: which messages are telemetry, in which format, from which
//! device. Input: an MQTT topic. Output: the device id, the payload format
//! and the hierarchy path the topic carries.

use crate::config::{IngestConfig, PayloadFormat, TopicMapping};

/// Which messages are telemetry, in which format, from which device.
#[derive(Debug, Clone)]
pub struct Router {
    prefix: String,
    mappings: Vec<(Vec<String>, PayloadFormat, usize, Vec<usize>)>,
}

impl Router {
    pub fn new(config: &IngestConfig) -> Self {
        Self {
            prefix: config.topic_prefix.clone(),
            mappings: config
                .topics
                .iter()
                .map(
                    |TopicMapping {
                         filter,
                         format,
                         device_level,
                         path_levels,
                     }| {
                        (
                            filter.split('/').map(String::from).collect(),
                            *format,
                            *device_level,
                            path_levels.clone(),
                        )
                    },
                )
                .collect(),
        }
    }

    /// The device and payload format of a topic, if any mapping claims it.
    pub fn route<'t>(&self, topic: &'t str) -> Option<(&'t str, PayloadFormat)> {
        if let Some((device, leaf)) = eddy_proto::topic::split_device_topic(&self.prefix, topic)
            && leaf == eddy_proto::topic::TELEMETRY
        {
            return Some((device, PayloadFormat::Auto));
        }
        let levels: Vec<&str> = topic.split('/').collect();
        self.mappings
            .iter()
            .find_map(|(filter, format, device_level, _)| {
                matches(filter, &levels).then(|| Some((*levels.get(*device_level)?, *format)))?
            })
    }

    /// The hierarchy path a mapping with `path_levels` reads from a topic.
    pub fn path(&self, topic: &str) -> Option<String> {
        let levels: Vec<&str> = topic.split('/').collect();
        let (_, _, _, path) = self
            .mappings
            .iter()
            .find(|(filter, _, _, path)| !path.is_empty() && matches(filter, &levels))?;
        let parts: Option<Vec<&str>> = path.iter().map(|&i| levels.get(i).copied()).collect();
        Some(parts?.join("/"))
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
        assert_eq!(
            router.route("eddy/v1/d1/telemetry"),
            Some(("d1", PayloadFormat::Auto))
        );
        assert_eq!(
            router.route("tele/plug-3/SENSOR"),
            Some(("plug-3", PayloadFormat::Json))
        );
        assert_eq!(
            router.route("zigbee2mqtt/bulb/state/x"),
            Some(("bulb", PayloadFormat::Json))
        );
        assert_eq!(router.route("eddy/v1/d1/status"), None);
        assert_eq!(router.route("tele/plug-3/STATE"), None);
        assert_eq!(router.route("tele/plug-3/SENSOR/extra"), None);
        assert_eq!(router.path("tele/plug-3/SENSOR"), None);
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
        assert_eq!(
            router.route("factory/plant-1/line-4/press-2/data"),
            Some(("press-2", PayloadFormat::Json))
        );
        assert_eq!(
            router
                .path("factory/plant-1/line-4/press-2/data")
                .as_deref(),
            Some("plant-1/line-4")
        );
    }
}
