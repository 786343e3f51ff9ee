use eddy_proto::topic::split_device_topic;

#[test]
fn device_topics_split_into_device_and_leaf() {
    assert_eq!(
        split_device_topic("eddy/v1", "eddy/v1/dev-1/telemetry"),
        Some(("dev-1", "telemetry"))
    );
    for bad in [
        "eddy/v1/telemetry",
        "eddy/v1//telemetry",
        "eddy/v1/dev/a/b",
        "other/v1/dev/telemetry",
        "eddy/v1dev/telemetry",
    ] {
        assert_eq!(split_device_topic("eddy/v1", bad), None, "{bad}");
    }
}
