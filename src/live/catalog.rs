//! The videos this gateway offers, as the cloud sees them: built once from the config, it
//! answers "which configured video does this `video_id` mean" and produces `live_capacity`, so
//! the advertised tree and the accepted ids can never disagree.

use crate::cloud::{
    CapacityCamera, CapacityDevice, CapacityVideo, Lens, LiveCapacity, LiveErrorCode, VideoId,
};
use crate::config::Config;
use crate::source::SourceSpec;
use std::collections::BTreeMap;

/// One video the cloud can start.
#[derive(Debug, Clone)]
pub struct VideoEntry {
    /// Index of its device in the config.
    pub device: usize,
    /// Index of its camera within the device.
    pub camera: usize,
    /// `{sn}/{camera_index}/{video_index}` as advertised.
    pub id: VideoId,
    /// Lenses it can switch between (advertised as `switchable_video_types`).
    pub lenses: Vec<Lens>,
    /// Lens a start begins with.
    pub start_lens: Lens,
    /// Pipeline inputs by name: lens names, plus `inside`/`outside` where configured.
    pub inputs: BTreeMap<String, SourceSpec>,
}

/// All videos plus the coexist limits at each level of the tree.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Every video, in config order.
    pub videos: Vec<VideoEntry>,
    gateway_max: u32,
    device_max: Vec<u32>,
    camera_max: BTreeMap<(usize, usize), u32>,
}

impl Catalog {
    /// Builds the catalog from a validated config.
    pub fn from_config(config: &Config) -> Catalog {
        let mut videos = Vec::new();
        let mut device_max = Vec::new();
        let mut camera_max = BTreeMap::new();
        for (d, device) in config.devices.iter().enumerate() {
            let sn = config.device_sn(d).to_string();
            let count: usize = device.cameras.iter().map(|c| c.videos.len()).sum();
            device_max.push(device.max_streams.unwrap_or(count as u32));
            for (c, camera) in device.cameras.iter().enumerate() {
                camera_max.insert((d, c), camera.max_streams);
                for video in &camera.videos {
                    let lenses: Vec<Lens> = video
                        .sources
                        .keys()
                        .filter_map(|name| name.parse().ok())
                        .collect();
                    let mut inputs = BTreeMap::new();
                    for (name, uri) in video.sources.iter().chain(video.positions.iter()) {
                        if let Ok(spec) = uri.parse() {
                            inputs.insert(name.clone(), spec);
                        }
                    }
                    videos.push(VideoEntry {
                        device: d,
                        camera: c,
                        id: VideoId {
                            sn: sn.clone(),
                            camera_index: camera.index.clone(),
                            video_index: video.index.clone(),
                        },
                        start_lens: video.start_lens().parse().unwrap_or(Lens::Normal),
                        lenses,
                        inputs,
                    });
                }
            }
        }
        Catalog {
            videos,
            gateway_max: config.gateway.max_streams,
            device_max,
            camera_max,
        }
    }

    /// Finds the configured video a request means.
    ///
    /// The serial must name a device (else 513001) and the camera index one of its cameras
    /// (else 513002). The video index may differ from the advertised one when the camera has a
    /// single video, because DJI's reference cloud rewrites every index to `{type}-0`.
    pub fn find(&self, id: &VideoId) -> Result<usize, LiveErrorCode> {
        if !self.videos.iter().any(|v| v.id.sn == id.sn) {
            return Err(LiveErrorCode::NoAircraft);
        }
        let same_camera: Vec<usize> = (0..self.videos.len())
            .filter(|&i| self.videos[i].id.same_camera(id))
            .collect();
        if let Some(&i) = same_camera
            .iter()
            .find(|&&i| self.videos[i].id.video_index == id.video_index)
        {
            return Ok(i);
        }
        match same_camera.as_slice() {
            [only] => Ok(*only),
            _ => Err(LiveErrorCode::NoCamera),
        }
    }

    /// Whether one more stream of video `v` fits the coexist limits, given the videos already
    /// streaming.
    pub fn fits(&self, v: usize, running: &[usize]) -> bool {
        let entry = &self.videos[v];
        let on_device = running
            .iter()
            .filter(|&&r| self.videos[r].device == entry.device)
            .count() as u32;
        let on_camera = running
            .iter()
            .filter(|&&r| {
                self.videos[r].device == entry.device && self.videos[r].camera == entry.camera
            })
            .count() as u32;
        (running.len() as u32) < self.gateway_max
            && on_device < self.device_max[entry.device]
            && on_camera < self.camera_max[&(entry.device, entry.camera)]
    }

    /// The `live_capacity` tree, generated from the config.
    pub fn capacity(&self, config: &Config) -> LiveCapacity {
        let mut device_list = Vec::new();
        for (d, device) in config.devices.iter().enumerate() {
            let mut camera_list = Vec::new();
            for (c, camera) in device.cameras.iter().enumerate() {
                let video_list: Vec<CapacityVideo> = self
                    .videos
                    .iter()
                    .filter(|v| v.device == d && v.camera == c)
                    .map(|v| CapacityVideo {
                        video_index: v.id.video_index.clone(),
                        video_type: v.start_lens,
                        switchable_video_types: v.lenses.clone(),
                    })
                    .collect();
                camera_list.push(CapacityCamera {
                    camera_index: camera.index.clone(),
                    available_video_number: video_list.len() as u32,
                    coexist_video_number_max: camera.max_streams.min(video_list.len() as u32),
                    video_list,
                });
            }
            let available: u32 = camera_list.iter().map(|c| c.available_video_number).sum();
            device_list.push(CapacityDevice {
                sn: config.device_sn(d).to_string(),
                available_video_number: available,
                coexist_video_number_max: self.device_max[d].min(available),
                camera_list,
            });
        }
        let available = self.videos.len() as u32;
        LiveCapacity {
            available_video_number: available,
            coexist_video_number_max: self.gateway_max.min(available),
            device_list,
        }
    }
}
