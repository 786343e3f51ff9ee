//! Recorded series replayed as sensors, and injected sensor faults.

use std::path::Path;
use std::sync::Arc;

use eddy_firmware::{Readings, Sensor, SensorError};
use eddy_firmware_host::faults::{Fault, Faulty};
use eddy_firmware_host::replay::{Replay, ReplayError, Series};

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testbench/data")
        .join(name)
}

fn read(sensor: &mut impl Sensor, now_ms: u64) -> Result<f64, SensorError> {
    let mut out = Readings::new();
    sensor.read(now_ms, &mut out)?;
    Ok(out[0].value)
}

#[test]
fn the_nab_machine_temperature_series_loads_and_replays_accelerated() {
    let series = Series::load(&data("machine_temperature_system_failure.csv")).expect("loads");
    // 22,695 rows; the hour from 2014-01-07 02:00 is recorded twice and
    // its repeat is skipped.
    assert_eq!((series.points.len(), series.skipped), (22_683, 12));
    // 2013-12-02 21:15:00 UTC, the first row.
    assert_eq!(series.points[0], (1_386_018_900_000, 73.96732207));
    // Rows every 5 minutes: at 300x one row per board second.
    let mut sensor = Replay::new("temperature", Arc::new(series.clone()), 300.0).expect("valid");
    assert_eq!(read(&mut sensor, 0), Ok(series.points[0].1));
    assert_eq!(read(&mut sensor, 1_000), Ok(series.points[1].1));
    assert_eq!(
        read(&mut sensor, 1_500),
        Ok(series.points[1].1),
        "held between rows"
    );
    assert_eq!(read(&mut sensor, 10_000), Ok(series.points[10].1));
    // Past the end it starts over.
    let span_s = (series.span_ms() / 300 / 1000) as u64;
    assert_eq!(
        read(&mut sensor, (span_s + 1) * 1000 + 5),
        Ok(series.points[0].1)
    );
    let ambient = Series::load(&data("ambient_temperature_system_failure.csv")).expect("loads");
    assert_eq!(ambient.points.len() + ambient.skipped, 7_267);
}

#[test]
fn bad_series_name_the_line() {
    let cases = [
        ("time,value\n", "line 1"),
        (
            "timestamp,value\n2014-01-01 00:00:00\n",
            "line 2: expected two fields",
        ),
        (
            "timestamp,value\n2014-13-01 00:00:00,1\n",
            "line 2: timestamp",
        ),
        (
            "timestamp,value\n2014-01-01 00:00:00,NaN\n",
            "line 2: value",
        ),
        ("timestamp,value\n", "no rows"),
    ];
    for (text, want) in cases {
        let err = Series::parse(text).expect_err(text).to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
    let repeated = Series::parse("timestamp,value\n2014-01-01 00:05:00,1\n2014-01-01 00:00:00,2\n")
        .expect("parses");
    assert_eq!((repeated.points.len(), repeated.skipped), (1, 1));
    assert!(matches!(
        Series::load(Path::new("/nonexistent.csv")),
        Err(ReplayError::Io { .. })
    ));
}

/// A sensor reading a constant 10.0.
struct Ten;

impl Sensor for Ten {
    fn read(&mut self, _now_ms: u64, out: &mut Readings) -> Result<(), SensorError> {
        out.push(eddy_proto::Reading {
            metric: "t".try_into().map_err(|_| SensorError::BadData)?,
            value: 10.0,
        })
        .map_err(|_| SensorError::Full)
    }
}

#[test]
fn faults_change_readings_as_declared() {
    let mut drift = Faulty::new(Ten, vec![Fault::Drift { per_hour: 2.0 }]);
    assert_eq!(read(&mut drift, 1_800_000), Ok(11.0));

    let mut step = Faulty::new(
        Ten,
        vec![Fault::Step {
            at_ms: 500,
            delta: -3.0,
        }],
    );
    assert_eq!(read(&mut step, 499), Ok(10.0));
    assert_eq!(read(&mut step, 500), Ok(7.0));

    let mut spike = Faulty::new(
        Ten,
        vec![Fault::Spike {
            every_ms: 1_000,
            magnitude: 50.0,
        }],
    );
    let values: Vec<f64> = (0..25)
        .map(|i| read(&mut spike, i * 100).expect("reads"))
        .collect();
    let spikes: Vec<usize> = (0..values.len()).filter(|&i| values[i] == 60.0).collect();
    assert_eq!(spikes, vec![10, 20], "one spiked reading per second");

    let mut dropout = Faulty::new(
        Ten,
        vec![Fault::Dropout {
            from_ms: 1_000,
            duration_ms: 500,
        }],
    );
    assert_eq!(read(&mut dropout, 999), Ok(10.0));
    assert_eq!(read(&mut dropout, 1_000), Err(SensorError::Bus));
    assert_eq!(read(&mut dropout, 1_500), Ok(10.0));

    // Stuck: the value stops following the signal (here a drifting one).
    let mut stuck = Faulty::new(
        Ten,
        vec![
            Fault::Drift { per_hour: 3_600.0 },
            Fault::StuckAt {
                from_ms: 2_000,
                duration_ms: 3_000,
            },
        ],
    );
    assert_eq!(read(&mut stuck, 1_000), Ok(11.0));
    assert_eq!(
        read(&mut stuck, 2_500),
        Ok(11.0),
        "stuck at the last good value"
    );
    assert_eq!(read(&mut stuck, 4_999), Ok(11.0));
    assert_eq!(read(&mut stuck, 5_000), Ok(15.0), "follows again");
}
