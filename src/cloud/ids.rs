//! Identifiers and small enums of the live API: `video_id`, quality, lens, url type, camera position.
//!
//! They are parsed once at the edge so the live manager never handles raw strings or integers
//! whose validity it would have to re-check.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why an identifier or enum value from the cloud was refused; names the input that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// `video_id` did not have exactly three `/`-separated parts.
    #[error("video_id must be sn/camera_index/video_index, got {got} '/'-separated part(s)")]
    VideoIdParts {
        /// How many parts were found.
        got: usize,
    },
    /// One of the three `video_id` parts was empty.
    #[error("video_id part {part} is empty")]
    EmptyPart {
        /// `sn`, `camera_index` or `video_index`.
        part: &'static str,
    },
    /// The SN contains characters the cloud's topic routing would not accept.
    #[error("video_id sn {0:?} is not [A-Za-z0-9]+")]
    BadSn(String),
    /// `camera_index` is not `<type>-<subtype>-<position>` in decimal digits.
    #[error("video_id camera_index {0:?} is not <digits>-<digits>-<digits>")]
    BadCameraIndex(String),
    /// `video_index` is not `<type>-<n>`.
    #[error("video_id video_index {0:?} is not <type>-<number>")]
    BadVideoIndex(String),
    /// A lens / `video_type` name outside normal, wide, zoom, ir, thermal.
    #[error("video_type {0:?} is not one of normal, wide, zoom, ir, thermal")]
    UnknownLens(String),
}

/// `{sn}/{camera_index}/{video_index}`: which stream of which camera of which device.
///
/// Kept as three parts because the daemon keys sessions by `sn` + `camera_index` while the
/// `video_index` suffix varies between clouds (the reference cloud rewrites it to `<type>-0`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VideoId {
    /// SN of the device that owns the camera (aircraft or the dock itself).
    pub sn: String,
    /// `<type>-<subtype>-<gimbal position>`, e.g. `165-0-7` for the dock camera.
    pub camera_index: String,
    /// `<type>-<n>`, e.g. `normal-0`.
    pub video_index: String,
}

impl VideoId {
    /// Parses and validates a `video_id` string from a services request.
    pub fn parse(s: &str) -> Result<VideoId, IdError> {
        let parts: Vec<&str> = s.split('/').collect();
        let [sn, camera_index, video_index] = parts.as_slice() else {
            return Err(IdError::VideoIdParts { got: parts.len() });
        };
        for (name, value) in [
            ("sn", sn),
            ("camera_index", camera_index),
            ("video_index", video_index),
        ] {
            if value.is_empty() {
                return Err(IdError::EmptyPart { part: name });
            }
        }
        if !sn.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(IdError::BadSn(clip(sn)));
        }
        if !is_camera_index(camera_index) {
            return Err(IdError::BadCameraIndex(clip(camera_index)));
        }
        if !is_video_index(video_index) {
            return Err(IdError::BadVideoIndex(clip(video_index)));
        }
        Ok(VideoId {
            sn: (*sn).to_owned(),
            camera_index: (*camera_index).to_owned(),
            video_index: (*video_index).to_owned(),
        })
    }

    /// True when both ids name the same physical camera, whatever their `video_index`; this is
    /// the key a session must be found by, since clouds may send any `<type>-0` for it.
    pub fn same_camera(&self, other: &VideoId) -> bool {
        self.sn == other.sn && self.camera_index == other.camera_index
    }

    /// The lens named by the `video_index` prefix (`zoom-0` → zoom), if it is a known one;
    /// lets the caller fall back to it when a request implies a lens without a `video_type`.
    pub fn index_lens(&self) -> Option<Lens> {
        let (ty, _) = self.video_index.rsplit_once('-')?;
        ty.parse().ok()
    }
}

impl fmt::Display for VideoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.sn, self.camera_index, self.video_index)
    }
}

impl FromStr for VideoId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VideoId::parse(s)
    }
}

/// Longest input quoted back in an error; the values come from the network and a log line
/// should not grow with them.
pub(crate) const MAX_QUOTED: usize = 64;

/// `s` cut to [`MAX_QUOTED`] characters (with `…` when cut), for quoting input in errors.
pub(crate) fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_QUOTED).collect();
        t.push('…');
        t
    }
}

/// `^\d+-\d+-\d+$`, checked by hand to avoid a regex dependency.
fn is_camera_index(s: &str) -> bool {
    let mut n = 0;
    for part in s.split('-') {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        n += 1;
    }
    n == 3
}

/// `<type>-<n>`: a non-empty word, a dash, decimal digits.
fn is_video_index(s: &str) -> bool {
    let Some((ty, n)) = s.rsplit_once('-') else {
        return false;
    };
    !ty.is_empty()
        && ty.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
}

/// `video_quality`: the cloud's five-step quality ladder; 0 lets the device adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoQuality {
    /// 0: the device picks.
    Adaptive,
    /// 1: 960×540.
    Smooth,
    /// 2: 1280×720 at a low bitrate.
    Standard,
    /// 3: 1280×720 at a higher bitrate.
    High,
    /// 4: 1920×1080.
    UltraHigh,
}

impl VideoQuality {
    /// Maps the wire integer; `None` outside 0..=4 so the caller can answer 513005.
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Adaptive,
            1 => Self::Smooth,
            2 => Self::Standard,
            3 => Self::High,
            4 => Self::UltraHigh,
            _ => return None,
        })
    }

    /// The wire integer, as reported back in `live_status`.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Adaptive => 0,
            Self::Smooth => 1,
            Self::Standard => 2,
            Self::High => 3,
            Self::UltraHigh => 4,
        }
    }
}

impl Serialize for VideoQuality {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.as_u8())
    }
}

impl<'de> Deserialize<'de> for VideoQuality {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        VideoQuality::from_u64(v)
            .ok_or_else(|| serde::de::Error::custom(format_args!("video_quality {v} is not 0..=4")))
    }
}

/// A lens / `video_type`; the set the reference cloud accepts (`infrared` is not one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lens {
    /// `normal`: the camera's default view.
    Normal,
    /// `wide`: wide-angle lens.
    Wide,
    /// `zoom`: zoom lens.
    Zoom,
    /// `ir`: infrared (thermal) lens as docks name it.
    Ir,
    /// `thermal`: infrared as remote controllers name it.
    Thermal,
}

impl Lens {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Wide => "wide",
            Self::Zoom => "zoom",
            Self::Ir => "ir",
            Self::Thermal => "thermal",
        }
    }
}

impl fmt::Display for Lens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lens {
    type Err = IdError;
    /// Only the exact lowercase wire names: the cloud never sends anything else, and a
    /// lenient parse here would advertise names back that the cloud then rejects.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "normal" => Self::Normal,
            "wide" => Self::Wide,
            "zoom" => Self::Zoom,
            "ir" => Self::Ir,
            "thermal" => Self::Thermal,
            _ => return Err(IdError::UnknownLens(clip(s))),
        })
    }
}

impl Serialize for Lens {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Lens {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `url_type` of `live_start_push`: which transport the `url` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UrlType {
    /// 0: Agora RTC (k=v url).
    Agora,
    /// 1: RTMP/RTMPS publish URL.
    Rtmp,
    /// 2: RTSP served by the device (remote controllers only).
    Rtsp,
    /// 3: GB/T 28181 registration parameters (k=v url).
    Gb28181,
    /// 4: WebRTC with WHIP signalling (HTTP(S) URL).
    Whip,
}

impl UrlType {
    /// Maps the wire integer; `None` outside 0..=4 so the caller can answer 513013.
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Agora,
            1 => Self::Rtmp,
            2 => Self::Rtsp,
            3 => Self::Gb28181,
            4 => Self::Whip,
            _ => return None,
        })
    }

    /// The wire integer.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Agora => 0,
            Self::Rtmp => 1,
            Self::Rtsp => 2,
            Self::Gb28181 => 3,
            Self::Whip => 4,
        }
    }
}

/// `camera_position` of `live_camera_change` (Dock 2/3): which view the dock camera shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CameraPosition {
    /// 0: inside the dock cabin.
    Inside,
    /// 1: outside the dock.
    Outside,
}

impl CameraPosition {
    /// Maps the wire integer; `None` for anything but 0 and 1.
    pub fn from_u64(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::Inside),
            1 => Some(Self::Outside),
            _ => None,
        }
    }

    /// The wire integer.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Inside => 0,
            Self::Outside => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_id_doc_examples_parse_and_display() {
        for s in [
            "1ZNDH1D0010098/39-0-7/normal-0",
            "1ZNDH1D0010098/42-0-0/zoom-0",
            "1ZNDH1D0010098/165-0-7/normal-0",
            "4SEDL13001002C/165-0-7/normal-0",
        ] {
            let id = VideoId::parse(s).unwrap();
            assert_eq!(id.to_string(), s);
        }
        let id = VideoId::parse("1ZNDH1D0010098/42-0-0/zoom-0").unwrap();
        assert_eq!(id.sn, "1ZNDH1D0010098");
        assert_eq!(id.camera_index, "42-0-0");
        assert_eq!(id.video_index, "zoom-0");
        assert_eq!(id.index_lens(), Some(Lens::Zoom));
    }

    #[test]
    fn same_camera_ignores_video_index() {
        let a = VideoId::parse("1ZNDH1D0010098/53-0-0/normal-0").unwrap();
        let b = VideoId::parse("1ZNDH1D0010098/53-0-0/zoom-0").unwrap();
        let c = VideoId::parse("1ZNDH1D0010098/39-0-7/normal-0").unwrap();
        let d = VideoId::parse("4SEDL13001002C/53-0-0/normal-0").unwrap();
        assert!(a.same_camera(&b));
        assert!(!a.same_camera(&c));
        assert!(!a.same_camera(&d));
    }

    #[test]
    fn video_id_rejections_name_the_part() {
        let cases: [(&str, IdError); 10] = [
            ("", IdError::VideoIdParts { got: 1 }),
            ("a/b", IdError::VideoIdParts { got: 2 }),
            ("a/1-2-3/normal-0/x", IdError::VideoIdParts { got: 4 }),
            ("/1-2-3/normal-0", IdError::EmptyPart { part: "sn" }),
            (
                "SN//normal-0",
                IdError::EmptyPart {
                    part: "camera_index",
                },
            ),
            (
                "SN/1-2-3/",
                IdError::EmptyPart {
                    part: "video_index",
                },
            ),
            ("S-N/1-2-3/normal-0", IdError::BadSn("S-N".into())),
            ("SN/1-2/normal-0", IdError::BadCameraIndex("1-2".into())),
            (
                "SN/0-42-x/normal-0",
                IdError::BadCameraIndex("0-42-x".into()),
            ),
            ("SN/1-2-3/normal", IdError::BadVideoIndex("normal".into())),
        ];
        for (s, want) in cases {
            assert_eq!(VideoId::parse(s), Err(want), "{s:?}");
        }
        assert!(VideoId::parse("SN/1-2-3/-0").is_err());
        assert!(VideoId::parse("SN/1-2-3/zoom-").is_err());
        assert!(VideoId::parse("SN/１-2-3/zoom-0").is_err());
        let long = "x".repeat(10_000);
        let msg = VideoId::parse(&format!("{long}-/1-2-3/zoom-0"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.len() < 200 && msg.ends_with("is not [A-Za-z0-9]+"),
            "{msg}"
        );
    }

    #[test]
    fn quality_maps_and_serialises_as_integer() {
        for v in 0..=4u64 {
            let q = VideoQuality::from_u64(v).unwrap();
            assert_eq!(u64::from(q.as_u8()), v);
            assert_eq!(serde_json::to_string(&q).unwrap(), v.to_string());
            let back: VideoQuality = serde_json::from_str(&v.to_string()).unwrap();
            assert_eq!(back, q);
        }
        assert_eq!(VideoQuality::from_u64(5), None);
        assert_eq!(VideoQuality::from_u64(65535), None);
        assert!(serde_json::from_str::<VideoQuality>("9").is_err());
    }

    #[test]
    fn lens_names_round_trip() {
        for l in [
            Lens::Normal,
            Lens::Wide,
            Lens::Zoom,
            Lens::Ir,
            Lens::Thermal,
        ] {
            assert_eq!(l.as_str().parse::<Lens>(), Ok(l));
            let json = serde_json::to_string(&l).unwrap();
            assert_eq!(json, format!("\"{}\"", l.as_str()));
            assert_eq!(serde_json::from_str::<Lens>(&json).unwrap(), l);
        }
        assert_eq!(
            "infrared".parse::<Lens>(),
            Err(IdError::UnknownLens("infrared".into()))
        );
        assert!("Zoom".parse::<Lens>().is_err());
        assert!(serde_json::from_str::<Lens>("\"infrared\"").is_err());
    }

    #[test]
    fn url_type_and_camera_position_map() {
        assert_eq!(UrlType::from_u64(0), Some(UrlType::Agora));
        assert_eq!(UrlType::from_u64(1), Some(UrlType::Rtmp));
        assert_eq!(UrlType::from_u64(2), Some(UrlType::Rtsp));
        assert_eq!(UrlType::from_u64(3), Some(UrlType::Gb28181));
        assert_eq!(UrlType::from_u64(4), Some(UrlType::Whip));
        assert_eq!(UrlType::from_u64(7), None);
        for v in 0..=4 {
            assert_eq!(u64::from(UrlType::from_u64(v).unwrap().as_u8()), v);
        }
        assert_eq!(CameraPosition::from_u64(0), Some(CameraPosition::Inside));
        assert_eq!(CameraPosition::from_u64(1), Some(CameraPosition::Outside));
        assert_eq!(CameraPosition::from_u64(2), None);
        assert_eq!(CameraPosition::Outside.as_u8(), 1);
    }
}
