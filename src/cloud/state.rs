//! `state` pushes (device → cloud): `live_capacity` and `live_status`, and the topic names.
//!
//! Each property goes in a `state` message of its own: the reference cloud routes a state
//! message by the first key it knows in `data` and silently drops the rest.

use super::ids::{Lens, VideoQuality};
use serde::{Deserialize, Serialize};

/// `live_capacity`: what can be streamed, as a device → camera → video tree. The cloud builds its
/// camera picker only from this, so it must list every camera the daemon can serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveCapacity {
    /// Streams selectable on the whole gateway.
    pub available_video_number: u32,
    /// Streams the gateway can push at the same time.
    pub coexist_video_number_max: u32,
    /// Video-source devices (the dock itself, the aircraft).
    pub device_list: Vec<CapacityDevice>,
}

/// One video-source device in [`LiveCapacity`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityDevice {
    /// SN of the device; the first part of every `video_id` of its cameras.
    pub sn: String,
    /// Streams selectable on this device.
    pub available_video_number: u32,
    /// Streams this device can push at the same time.
    pub coexist_video_number_max: u32,
    /// Cameras on this device.
    pub camera_list: Vec<CapacityCamera>,
}

/// One camera in [`CapacityDevice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityCamera {
    /// `<type>-<subtype>-<position>`; the reference cloud only accepts type/position values it
    /// knows (e.g. `165-0-7` for the dock camera), so this should come from DJI's tables.
    pub camera_index: String,
    /// Streams selectable on this camera.
    pub available_video_number: u32,
    /// Streams this camera can push at the same time.
    pub coexist_video_number_max: u32,
    /// Streams of this camera.
    pub video_list: Vec<CapacityVideo>,
}

/// One stream of a [`CapacityCamera`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityVideo {
    /// `<type>-<n>`, the last part of the `video_id`.
    pub video_index: String,
    /// Lens the stream shows by default.
    pub video_type: Lens,
    /// Lenses `live_lens_change` may switch this stream to; the cloud offers lens switching
    /// only when this is non-empty.
    pub switchable_video_types: Vec<Lens>,
}

/// One entry of `live_status`: how one stream is doing, so the cloud can show it and its error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveStatus {
    /// The `video_id` exactly as the cloud used it to start the stream.
    pub video_id: String,
    /// Lens currently shown (changes with `live_lens_change`, the `video_id` does not).
    pub video_type: Lens,
    /// Current quality.
    pub video_quality: VideoQuality,
    /// 0 not live, 1 live.
    pub status: u8,
    /// 0, or the 513xxx code of the last failure of this stream.
    pub error_status: u32,
}

#[derive(Serialize)]
struct StateMessage<'a, D> {
    tid: &'a str,
    bid: &'a str,
    timestamp: u64,
    gateway: &'a str,
    data: D,
}

#[derive(Serialize)]
struct CapacityData<'a> {
    live_capacity: &'a LiveCapacity,
}

#[derive(Serialize)]
struct StatusData<'a> {
    live_status: &'a [LiveStatus],
}

fn encode<D: Serialize>(gateway_sn: &str, data: D, tid: &str, bid: &str, ts: u64) -> Vec<u8> {
    let msg = StateMessage {
        tid,
        bid,
        timestamp: ts,
        gateway: gateway_sn,
        data,
    };
    // Only strings, integers and enums with infallible serialisers: this cannot fail; the
    // fallback keeps the function total without a panic path.
    serde_json::to_vec(&msg).unwrap_or_default()
}

/// Encodes a `state` message whose `data` holds `live_capacity` alone. Publish it on
/// [`state_topic`]`(gateway_sn)` at connect and whenever cameras change.
pub fn encode_capacity(
    gateway_sn: &str,
    capacity: &LiveCapacity,
    tid: &str,
    bid: &str,
    timestamp_ms: u64,
) -> Vec<u8> {
    let data = CapacityData {
        live_capacity: capacity,
    };
    encode(gateway_sn, data, tid, bid, timestamp_ms)
}

/// Encodes a `state` message whose `data` holds `live_status` alone. Pass the full array, one
/// entry per stream, so that every message describes all streams and a lost one heals itself.
pub fn encode_status(
    gateway_sn: &str,
    status: &[LiveStatus],
    tid: &str,
    bid: &str,
    timestamp_ms: u64,
) -> Vec<u8> {
    let data = StatusData {
        live_status: status,
    };
    encode(gateway_sn, data, tid, bid, timestamp_ms)
}

/// `thing/product/{sn}/state`, where `live_capacity` and `live_status` are published.
pub fn state_topic(sn: &str) -> String {
    format!("thing/product/{sn}/state")
}

/// `thing/product/{gateway_sn}/services`, where the cloud sends live commands.
pub fn services_topic(gateway_sn: &str) -> String {
    format!("thing/product/{gateway_sn}/services")
}

/// `thing/product/{gateway_sn}/services_reply`, where each command is answered.
pub fn services_reply_topic(gateway_sn: &str) -> String {
    format!("thing/product/{gateway_sn}/services_reply")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The §7 capacity vector, verbatim.
    const TV00: &str = r#"{"tid":"6a7bfe89-c386-4043-b600-b518e10096cc","bid":"42a19f36-5117-4520-bd13-fd61d818d52e","timestamp":1654070968655,"gateway":"4SEDL13001002C",
 "data":{"live_capacity":{"available_video_number":3,"coexist_video_number_max":2,"device_list":[
  {"sn":"4SEDL13001002C","available_video_number":1,"coexist_video_number_max":1,"camera_list":[
    {"camera_index":"165-0-7","available_video_number":1,"coexist_video_number_max":1,
     "video_list":[{"video_index":"normal-0","video_type":"normal","switchable_video_types":["normal"]}]}]},
  {"sn":"1ZNDH1D0010098","available_video_number":2,"coexist_video_number_max":1,"camera_list":[
    {"camera_index":"39-0-7","available_video_number":1,"coexist_video_number_max":1,
     "video_list":[{"video_index":"normal-0","video_type":"normal","switchable_video_types":["normal"]}]},
    {"camera_index":"53-0-0","available_video_number":1,"coexist_video_number_max":1,
     "video_list":[{"video_index":"normal-0","video_type":"wide","switchable_video_types":["wide","zoom","ir"]}]}]}]}}}"#;

    fn camera(index: &str, ty: Lens, switchable: &[Lens]) -> CapacityCamera {
        CapacityCamera {
            camera_index: index.into(),
            available_video_number: 1,
            coexist_video_number_max: 1,
            video_list: vec![CapacityVideo {
                video_index: "normal-0".into(),
                video_type: ty,
                switchable_video_types: switchable.to_vec(),
            }],
        }
    }

    fn tv00_capacity() -> LiveCapacity {
        LiveCapacity {
            available_video_number: 3,
            coexist_video_number_max: 2,
            device_list: vec![
                CapacityDevice {
                    sn: "4SEDL13001002C".into(),
                    available_video_number: 1,
                    coexist_video_number_max: 1,
                    camera_list: vec![camera("165-0-7", Lens::Normal, &[Lens::Normal])],
                },
                CapacityDevice {
                    sn: "1ZNDH1D0010098".into(),
                    available_video_number: 2,
                    coexist_video_number_max: 1,
                    camera_list: vec![
                        camera("39-0-7", Lens::Normal, &[Lens::Normal]),
                        camera("53-0-0", Lens::Wide, &[Lens::Wide, Lens::Zoom, Lens::Ir]),
                    ],
                },
            ],
        }
    }

    #[test]
    fn tv00_capacity_encodes_to_the_vector() {
        let bytes = encode_capacity(
            "4SEDL13001002C",
            &tv00_capacity(),
            "6a7bfe89-c386-4043-b600-b518e10096cc",
            "42a19f36-5117-4520-bd13-fd61d818d52e",
            1654070968655,
        );
        let got: Value = serde_json::from_slice(&bytes).unwrap();
        let want: Value = serde_json::from_str(TV00).unwrap();
        assert_eq!(got, want);
        let data = got["data"].as_object().unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["live_capacity"]);
        let back: LiveCapacity =
            serde_json::from_value(want["data"]["live_capacity"].clone()).unwrap();
        assert_eq!(back, tv00_capacity());
    }

    #[test]
    fn tv00_shape_rules_hold() {
        let cap = tv00_capacity();
        for d in &cap.device_list {
            assert!(d.sn.bytes().all(|b| b.is_ascii_alphanumeric()));
            for c in &d.camera_list {
                let parts: Vec<&str> = c.camera_index.split('-').collect();
                assert_eq!(parts.len(), 3);
                assert!(parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
            }
        }
        assert_eq!(
            state_topic("4SEDL13001002C"),
            "thing/product/4SEDL13001002C/state"
        );
    }

    #[test]
    fn status_message_alone_in_data() {
        let st = [LiveStatus {
            video_id: "4SEDL13001002C/165-0-7/normal-0".into(),
            video_type: Lens::Normal,
            video_quality: VideoQuality::Adaptive,
            status: 1,
            error_status: 0,
        }];
        let bytes = encode_status("4SEDL13001002C", &st, "t", "b", 1654070968655);
        let got: Value = serde_json::from_slice(&bytes).unwrap();
        let want = serde_json::json!({"tid":"t","bid":"b","timestamp":1654070968655u64,"gateway":"4SEDL13001002C",
            "data":{"live_status":[{"video_id":"4SEDL13001002C/165-0-7/normal-0","video_type":"normal","video_quality":0,"status":1,"error_status":0}]}});
        assert_eq!(got, want);
        let empty: Value = serde_json::from_slice(&encode_status("G", &[], "t", "b", 0)).unwrap();
        assert_eq!(empty["data"], serde_json::json!({"live_status": []}));
    }

    #[test]
    fn topics() {
        assert_eq!(services_topic("DOCK1"), "thing/product/DOCK1/services");
        assert_eq!(
            services_reply_topic("DOCK1"),
            "thing/product/DOCK1/services_reply"
        );
    }
}
