//! The 513xxx live-stream result codes of the DJI Cloud API.
//!
//! Every `services_reply` and every `live_status[].error_status` carries one of these (or 0 for
//! success). The cloud decodes `code % 100000` into its own enum, so only the codes listed in the
//! DJI tables are meaningful to it; inventing others would show up as "unknown" in the console.

use std::fmt;

/// A live-stream error code as a dock reports it (source digit 5, module 13).
///
/// Kept as a closed enum so the rest of the daemon can only reply with codes the cloud knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveErrorCode {
    /// 513001: the SN in the request is not a device this gateway reports.
    NoAircraft,
    /// 513002: the camera in `video_id` does not exist (not in `live_capacity`).
    NoCamera,
    /// 513003: that camera is already streaming.
    AlreadyStarted,
    /// 513004: the method is not supported by this device.
    FunctionNotSupported,
    /// 513005: the requested quality is not supported.
    QualityNotSupported,
    /// 513006: start failed; the cloud should refresh and retry.
    RefreshAndRetry,
    /// 513008: the device has no video data for that stream.
    NoStreamData,
    /// 513009: requests arrive too often.
    TooFrequent,
    /// 513010: the device cannot reach the media server.
    ConnectFailed,
    /// 513011: stop/quality/lens asked for a stream that is not live.
    NotStreaming,
    /// 513012: the stream is live and the lens/camera cannot be switched.
    SwitchNotSupported,
    /// 513013: the url_type (transport protocol) is not supported.
    UrlTypeNotSupported,
    /// 513014: live parameters are wrong or incomplete.
    BadParameters,
    /// 513015: the uplink is congested.
    NetworkCongestion,
    /// 513016: the video could not be decoded (e.g. no key frame for a long time).
    DecodeFailed,
    /// 513017: live paused while the aircraft downloads media files.
    Paused,
    /// 513099: unknown device-side failure; retry later.
    Unknown,
}

/// Every code, in table order; lets tests and callers iterate without repeating the list.
pub const ALL_LIVE_ERROR_CODES: [LiveErrorCode; 17] = [
    LiveErrorCode::NoAircraft,
    LiveErrorCode::NoCamera,
    LiveErrorCode::AlreadyStarted,
    LiveErrorCode::FunctionNotSupported,
    LiveErrorCode::QualityNotSupported,
    LiveErrorCode::RefreshAndRetry,
    LiveErrorCode::NoStreamData,
    LiveErrorCode::TooFrequent,
    LiveErrorCode::ConnectFailed,
    LiveErrorCode::NotStreaming,
    LiveErrorCode::SwitchNotSupported,
    LiveErrorCode::UrlTypeNotSupported,
    LiveErrorCode::BadParameters,
    LiveErrorCode::NetworkCongestion,
    LiveErrorCode::DecodeFailed,
    LiveErrorCode::Paused,
    LiveErrorCode::Unknown,
];

impl LiveErrorCode {
    /// The numeric value put in `data.result` / `error_status`.
    pub fn code(self) -> u32 {
        match self {
            Self::NoAircraft => 513001,
            Self::NoCamera => 513002,
            Self::AlreadyStarted => 513003,
            Self::FunctionNotSupported => 513004,
            Self::QualityNotSupported => 513005,
            Self::RefreshAndRetry => 513006,
            Self::NoStreamData => 513008,
            Self::TooFrequent => 513009,
            Self::ConnectFailed => 513010,
            Self::NotStreaming => 513011,
            Self::SwitchNotSupported => 513012,
            Self::UrlTypeNotSupported => 513013,
            Self::BadParameters => 513014,
            Self::NetworkCongestion => 513015,
            Self::DecodeFailed => 513016,
            Self::Paused => 513017,
            Self::Unknown => 513099,
        }
    }

    /// Maps a numeric code back, e.g. when reading `error_status` from a sink report or a test
    /// peer; `None` for anything outside the DJI live table (513007 included: docks never send it).
    pub fn from_code(code: u32) -> Option<Self> {
        ALL_LIVE_ERROR_CODES.into_iter().find(|c| c.code() == code)
    }

    /// The English meaning from the DJI error table, so log lines say what the cloud will show.
    pub fn describe(self) -> &'static str {
        match self {
            Self::NoAircraft => "Live failed: the aircraft does not exist or its type is wrong",
            Self::NoCamera => "Live failed: the camera does not exist or the camera type is wrong",
            Self::AlreadyStarted => "The camera is already live streaming; do not start it again",
            Self::FunctionNotSupported => "The function is not supported",
            Self::QualityNotSupported => "Live failed: the live quality parameter is wrong",
            Self::RefreshAndRetry => "Live start failed: refresh and retry",
            Self::NoStreamData => {
                "Live failed: the device-side video transmission data is abnormal"
            }
            Self::TooFrequent => "The operation is too frequent",
            Self::ConnectFailed => "Live failed: the device cannot connect to the network",
            Self::NotStreaming => "Operation failed: the device has not started live streaming",
            Self::SwitchNotSupported => {
                "Operation failed: the device is already live and lens switching is not supported"
            }
            Self::UrlTypeNotSupported => {
                "Live failed: the video transport protocol is not supported"
            }
            Self::BadParameters => "Live failed: the live parameters are wrong or incomplete",
            Self::NetworkCongestion => "Live abnormal: the network is congested; refresh and retry",
            Self::DecodeFailed => "Live abnormal: video decoding failed",
            Self::Paused => "Live paused: waiting for the aircraft media-file download to finish",
            Self::Unknown => "Live failed: please retry later",
        }
    }
}

impl fmt::Display for LiveErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.describe())
    }
}

impl From<LiveErrorCode> for u32 {
    fn from(c: LiveErrorCode) -> u32 {
        c.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The §4 table as (code, variant); kept literal so a typo in `code()` cannot hide.
    const TABLE: [(u32, LiveErrorCode); 17] = [
        (513001, LiveErrorCode::NoAircraft),
        (513002, LiveErrorCode::NoCamera),
        (513003, LiveErrorCode::AlreadyStarted),
        (513004, LiveErrorCode::FunctionNotSupported),
        (513005, LiveErrorCode::QualityNotSupported),
        (513006, LiveErrorCode::RefreshAndRetry),
        (513008, LiveErrorCode::NoStreamData),
        (513009, LiveErrorCode::TooFrequent),
        (513010, LiveErrorCode::ConnectFailed),
        (513011, LiveErrorCode::NotStreaming),
        (513012, LiveErrorCode::SwitchNotSupported),
        (513013, LiveErrorCode::UrlTypeNotSupported),
        (513014, LiveErrorCode::BadParameters),
        (513015, LiveErrorCode::NetworkCongestion),
        (513016, LiveErrorCode::DecodeFailed),
        (513017, LiveErrorCode::Paused),
        (513099, LiveErrorCode::Unknown),
    ];

    #[test]
    fn every_row_round_trips() {
        for (n, c) in TABLE {
            assert_eq!(c.code(), n);
            assert_eq!(LiveErrorCode::from_code(n), Some(c));
            assert!(!c.describe().is_empty());
            assert!(c.to_string().starts_with(&n.to_string()));
        }
        assert_eq!(ALL_LIVE_ERROR_CODES.len(), TABLE.len());
    }

    #[test]
    fn unknown_codes_are_none() {
        for n in [0, 513000, 513007, 513018, 513098, 613006, u32::MAX] {
            assert_eq!(LiveErrorCode::from_code(n), None, "{n}");
        }
    }
}
