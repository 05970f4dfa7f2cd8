//! `--json` output with fortio's result field names (fortio's
//! `HTTPRunnerResults`), so dashboards and scripts written for fortio read it.
//! Durations in histograms are seconds (f64) and `ActualDuration` is Go
//! `time.Duration` nanoseconds, as fortio writes them. Fields fortio does not
//! have are added after its own and named so they cannot clash.

use super::stats::{Recorder, Stats, REPORTED_PERCENTILES};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Serialize)]
pub struct Percentile {
    #[serde(rename = "Percentile")]
    pub percentile: f64,
    #[serde(rename = "Value")]
    pub value: f64,
}

#[derive(Debug, Serialize)]
pub struct Bucket {
    #[serde(rename = "Start")]
    pub start: f64,
    #[serde(rename = "End")]
    pub end: f64,
    /// Cumulative percent of samples up to `End`.
    #[serde(rename = "Percent")]
    pub percent: f64,
    #[serde(rename = "Count")]
    pub count: u64,
}

/// fortio's `stats.HistogramData`.
#[derive(Debug, Serialize)]
pub struct HistogramData {
    #[serde(rename = "Count")]
    pub count: u64,
    #[serde(rename = "Min")]
    pub min: f64,
    #[serde(rename = "Max")]
    pub max: f64,
    #[serde(rename = "Sum")]
    pub sum: f64,
    #[serde(rename = "Avg")]
    pub avg: f64,
    #[serde(rename = "StdDev")]
    pub std_dev: f64,
    #[serde(rename = "Data")]
    pub data: Vec<Bucket>,
    #[serde(rename = "Percentiles", skip_serializing_if = "Option::is_none")]
    pub percentiles: Option<Vec<Percentile>>,
}

/// Convert a recorder to fortio's shape, multiplying every value by `scale`
/// (1e-9 turns nanoseconds into seconds). `first_bucket` is the width of the
/// first logarithmic bucket in recorded units; each next bucket is 25% wider.
pub fn histogram_data(
    r: &Recorder,
    scale: f64,
    first_bucket: u64,
    with_percentiles: bool,
) -> HistogramData {
    let count = r.count();
    let mut data = Vec::new();
    if count > 0 {
        let mut start = r.min as f64;
        for v in r.hist.iter_log(first_bucket.max(1), 1.25) {
            let n = v.count_since_last_iteration();
            let end = (v.value_iterated_to() as f64).min(r.max as f64);
            if n > 0 {
                data.push(Bucket {
                    start: start * scale,
                    end: end * scale,
                    percent: v.percentile(),
                    count: n,
                });
            }
            start = end;
        }
    }
    let percentiles = with_percentiles.then(|| {
        REPORTED_PERCENTILES
            .iter()
            .map(|p| Percentile {
                percentile: *p,
                value: r.percentile(*p) as f64 * scale,
            })
            .collect()
    });
    HistogramData {
        count,
        min: r.min_or_zero() as f64 * scale,
        max: r.max as f64 * scale,
        sum: r.sum as f64 * scale,
        avg: r.mean() * scale,
        std_dev: if count > 0 {
            r.hist.stdev() * scale
        } else {
            0.0
        },
        data,
        percentiles,
    }
}

/// What the run was asked to do, for the result header.
pub struct RunInfo<'a> {
    pub url: &'a str,
    pub run_type: &'a str,
    pub labels: &'a str,
    pub start: SystemTime,
    /// None: closed loop ("max").
    pub requested_qps: Option<f64>,
    pub requested_duration: Option<Duration>,
    pub exactly: Option<u64>,
    pub connections: usize,
    pub threads: usize,
    pub actual_duration: Duration,
    /// "HTTP/1.1", "HTTP/2" or "" (raw TCP).
    pub http_version: &'a str,
    pub tls: bool,
    /// HTTP/2 concurrent streams per connection (1 otherwise).
    pub streams: usize,
}

/// fortio's `fhttp.HTTPRunnerResults` (plus ringmesh extras at the end).
#[derive(Debug, Serialize)]
pub struct FortioResult {
    #[serde(rename = "RunType")]
    pub run_type: String,
    #[serde(rename = "Labels")]
    pub labels: String,
    #[serde(rename = "StartTime")]
    pub start_time: String,
    #[serde(rename = "RequestedQPS")]
    pub requested_qps: String,
    #[serde(rename = "RequestedDuration")]
    pub requested_duration: String,
    #[serde(rename = "ActualQPS")]
    pub actual_qps: f64,
    #[serde(rename = "ActualDuration")]
    pub actual_duration: u64,
    /// fortio's "threads" are its connections (`-c`).
    #[serde(rename = "NumThreads")]
    pub num_threads: usize,
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "DurationHistogram")]
    pub duration_histogram: HistogramData,
    #[serde(rename = "ErrorsDurationHistogram")]
    pub errors_duration_histogram: HistogramData,
    #[serde(rename = "Exactly")]
    pub exactly: u64,
    #[serde(rename = "Jitter")]
    pub jitter: bool,
    #[serde(rename = "Uniform")]
    pub uniform: bool,
    #[serde(rename = "NoCatchUp")]
    pub no_catch_up: bool,
    #[serde(rename = "RunID")]
    pub run_id: u64,
    #[serde(rename = "ID")]
    pub id: String,
    /// Status code -> count; transport errors under "-1" as fortio does.
    #[serde(rename = "RetCodes")]
    pub ret_codes: BTreeMap<String, u64>,
    #[serde(rename = "Sizes")]
    pub sizes: HistogramData,
    #[serde(rename = "HeaderSizes")]
    pub header_sizes: HistogramData,
    #[serde(rename = "URL")]
    pub url: String,
    /// Connections per fortio thread: always 1 here.
    #[serde(rename = "NumConnections")]
    pub num_connections: usize,
    #[serde(rename = "SocketCount")]
    pub socket_count: u64,
    #[serde(rename = "AbortOn")]
    pub abort_on: i32,
    // ringmesh extras.
    #[serde(rename = "RuntimeThreads")]
    pub runtime_threads: usize,
    #[serde(rename = "ErrorKinds")]
    pub error_kinds: BTreeMap<String, u64>,
    #[serde(rename = "BytesSent")]
    pub bytes_sent: u64,
    #[serde(rename = "BytesReceived")]
    pub bytes_received: u64,
    /// Open loop latencies count from the intended send time.
    #[serde(rename = "CoordinatedOmissionCorrected")]
    pub coordinated_omission_corrected: bool,
    #[serde(rename = "HTTPVersion", skip_serializing_if = "String::is_empty")]
    pub http_version: String,
    #[serde(rename = "TLS")]
    pub tls: bool,
    #[serde(rename = "StreamsPerConnection")]
    pub streams_per_connection: usize,
    /// TLS handshake times in seconds (present when TLS was used).
    #[serde(
        rename = "TLSHandshakeHistogram",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_handshake_histogram: Option<HistogramData>,
}

pub fn build(info: &RunInfo<'_>, stats: &Stats) -> FortioResult {
    let secs = info.actual_duration.as_secs_f64();
    let completed = stats.responses() + stats.error_count();
    let mut ret_codes: BTreeMap<String, u64> = stats
        .status_codes
        .iter()
        .map(|(c, n)| (c.to_string(), *n))
        .collect();
    if stats.error_count() > 0 {
        ret_codes.insert("-1".into(), stats.error_count());
    }
    FortioResult {
        run_type: info.run_type.to_string(),
        labels: info.labels.to_string(),
        start_time: rfc3339(info.start),
        requested_qps: match info.requested_qps {
            Some(q) => format_qps(q),
            None => "max".into(),
        },
        requested_duration: match (info.exactly, info.requested_duration) {
            (Some(n), _) => format!("exactly {n} calls"),
            (None, Some(d)) => format!("{d:?}"),
            (None, None) => String::new(),
        },
        actual_qps: if secs > 0.0 {
            completed as f64 / secs
        } else {
            0.0
        },
        actual_duration: info.actual_duration.as_nanos() as u64,
        num_threads: info.connections,
        version: concat!("ringmesh-bench ", env!("CARGO_PKG_VERSION")).into(),
        duration_histogram: histogram_data(&stats.latency, 1e-9, 1000, true),
        errors_duration_histogram: histogram_data(&stats.error_latency, 1e-9, 1000, false),
        exactly: info.exactly.unwrap_or(0),
        jitter: false,
        uniform: true,
        no_catch_up: false,
        run_id: 0,
        id: fortio_id(info.start),
        ret_codes,
        sizes: histogram_data(&stats.sizes, 1.0, 1, false),
        header_sizes: histogram_data(&stats.header_sizes, 1.0, 1, false),
        url: info.url.to_string(),
        num_connections: 1,
        socket_count: stats.connections_opened,
        abort_on: 0,
        runtime_threads: info.threads,
        error_kinds: stats
            .errors
            .iter()
            .map(|(k, n)| (k.name().to_string(), *n))
            .collect(),
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        coordinated_omission_corrected: info.requested_qps.is_some(),
        http_version: info.http_version.to_string(),
        tls: info.tls,
        streams_per_connection: info.streams,
        tls_handshake_histogram: (stats.tls_handshakes.count() > 0)
            .then(|| histogram_data(&stats.tls_handshakes, 1e-9, 1000, true)),
    }
}

fn format_qps(q: f64) -> String {
    if q.fract() == 0.0 {
        format!("{}", q as u64)
    } else {
        format!("{q}")
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn split_time(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    (
        y,
        m,
        d,
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        since.subsec_nanos(),
    )
}

/// `2023-07-21T14:00:40.134434969Z`
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ns) = split_time(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ns:09}Z")
}

/// fortio's run ID format: `2023-07-21-140040`.
fn fortio_id(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, _) = split_time(t);
    format!("{y:04}-{mo:02}-{d:02}-{h:02}{mi:02}{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::ErrorKind;

    #[test]
    fn dates_format_like_fortio() {
        let t = UNIX_EPOCH + Duration::new(1_689_948_040, 134_434_969);
        assert_eq!(rfc3339(t), "2023-07-21T14:00:40.134434969Z");
        assert_eq!(fortio_id(t), "2023-07-21-140040");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    fn sample_stats() -> Stats {
        let mut s = Stats::default();
        for us in 1..=1000u64 {
            s.record_response(
                Duration::from_micros(us),
                if us % 10 == 0 { 503 } else { 200 },
                100,
                150,
            );
        }
        s.record_error(ErrorKind::Connect, None);
        s.connections_opened = 4;
        s
    }

    #[test]
    fn json_has_fortio_field_names_and_units() {
        let info = RunInfo {
            url: "http://127.0.0.1:1/",
            run_type: "HTTP",
            labels: "",
            start: UNIX_EPOCH,
            requested_qps: Some(500.0),
            requested_duration: Some(Duration::from_secs(2)),
            exactly: None,
            connections: 4,
            threads: 1,
            actual_duration: Duration::from_secs(2),
            http_version: "HTTP/1.1",
            tls: false,
            streams: 1,
        };
        let v = serde_json::to_value(build(&info, &sample_stats())).unwrap();
        for field in [
            "RunType",
            "Labels",
            "StartTime",
            "RequestedQPS",
            "RequestedDuration",
            "ActualQPS",
            "ActualDuration",
            "NumThreads",
            "Version",
            "DurationHistogram",
            "ErrorsDurationHistogram",
            "Exactly",
            "RetCodes",
            "Sizes",
            "HeaderSizes",
            "URL",
            "SocketCount",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert_eq!(v["RequestedQPS"], "500");
        assert_eq!(v["NumThreads"], 4);
        assert_eq!(v["ActualDuration"], 2_000_000_000u64);
        assert!((v["ActualQPS"].as_f64().unwrap() - 500.5).abs() < 1e-9);
        assert_eq!(v["RetCodes"]["200"], 900);
        assert_eq!(v["RetCodes"]["503"], 100);
        assert_eq!(v["RetCodes"]["-1"], 1);
        let h = &v["DurationHistogram"];
        assert_eq!(h["Count"], 1000);
        assert!((h["Min"].as_f64().unwrap() - 1e-6).abs() < 1e-12);
        assert!((h["Max"].as_f64().unwrap() - 1e-3).abs() < 1e-12);
        assert!((h["Avg"].as_f64().unwrap() - 500.5e-6).abs() < 1e-12);
        let p: Vec<(f64, f64)> = h["Percentiles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["Percentile"].as_f64().unwrap(),
                    p["Value"].as_f64().unwrap(),
                )
            })
            .collect();
        assert_eq!(p[0].0, 50.0);
        assert!((p[0].1 - 500e-6).abs() < 1e-6, "{p:?}");
        let data = h["Data"].as_array().unwrap();
        let total: u64 = data.iter().map(|b| b["Count"].as_u64().unwrap()).sum();
        assert_eq!(total, 1000);
        assert_eq!(data.last().unwrap()["Percent"].as_f64().unwrap(), 100.0);
        for b in data {
            for k in ["Start", "End", "Percent", "Count"] {
                assert!(b.get(k).is_some());
            }
        }
        assert_eq!(v["Sizes"]["Avg"], 150.0);
        assert_eq!(v["HeaderSizes"]["Count"], 1000);
    }

    #[test]
    fn closed_loop_is_max() {
        let info = RunInfo {
            url: "x",
            run_type: "HTTP",
            labels: "",
            start: UNIX_EPOCH,
            requested_qps: None,
            requested_duration: None,
            exactly: Some(10),
            connections: 1,
            threads: 1,
            actual_duration: Duration::from_secs(1),
            http_version: "HTTP/1.1",
            tls: false,
            streams: 1,
        };
        let v = serde_json::to_value(build(&info, &Stats::default())).unwrap();
        assert_eq!(v["RequestedQPS"], "max");
        assert_eq!(v["RequestedDuration"], "exactly 10 calls");
        assert_eq!(v["DurationHistogram"]["Count"], 0);
    }
}
