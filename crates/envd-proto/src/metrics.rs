//! `GET /metrics`: the guest's resource use, with envd's field names.

use serde::{Deserialize, Serialize};

/// One sample of the guest's resource use. Fields a sender leaves out read as zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metrics {
    /// Unix time of the sample, in seconds.
    pub ts: i64,
    pub cpu_count: u32,
    /// CPU use over a short window, 0 to 100.
    pub cpu_used_pct: f64,
    /// Bytes.
    pub mem_total: u64,
    /// Bytes (total minus available).
    pub mem_used: u64,
    /// Bytes of page cache and buffers.
    pub mem_cache: u64,
    pub mem_total_mib: u64,
    pub mem_used_mib: u64,
    /// Bytes of the root filesystem.
    pub disk_used: u64,
    pub disk_total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envd_field_names_and_missing_fields_as_zero() {
        let m = Metrics { ts: 5, cpu_count: 2, mem_total: 10, ..Default::default() };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["ts"], 5);
        assert_eq!(v["cpu_count"], 2);
        assert_eq!(v["mem_total"], 10);
        assert_eq!(v["mem_total_mib"], 0);
        let back: Metrics = serde_json::from_str(r#"{"ts":5,"cpu_count":2,"mem_total":10,"extra":true}"#).unwrap();
        assert_eq!(back, m);
    }
}
