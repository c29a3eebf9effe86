//! Pure H.264 bitstream helpers: Annex-B NAL iteration, access-unit splitting, SPS parsing and
//! the AVC (length-prefixed) forms that FLV/MP4 style containers need.
//!
//! Sources hand us Annex-B byte streams of unknown quality (payload feeds, FIFOs, encoders), so
//! everything here is total: bad input gives a typed error or is skipped, never a panic.

use bytes::Bytes;
use std::collections::VecDeque;
use thiserror::Error;

/// NAL unit type values (ITU-T H.264 table 7-1) that the splitter and muxers care about.
pub mod nal_type {
    /// Coded slice of a non-IDR picture.
    pub const SLICE: u8 = 1;
    /// Coded slice of an IDR picture: a decoder can start here.
    pub const IDR: u8 = 5;
    /// Supplemental enhancement information.
    pub const SEI: u8 = 6;
    /// Sequence parameter set.
    pub const SPS: u8 = 7;
    /// Picture parameter set.
    pub const PPS: u8 = 8;
    /// Access unit delimiter.
    pub const AUD: u8 = 9;
}

/// A NAL unit type, named where dockcast treats it specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NalType {
    /// Non-IDR slice (type 1).
    Slice,
    /// Data partitions A–C (types 2–4): VCL, but not produced by any encoder we feed.
    Partition(u8),
    /// IDR slice (type 5).
    Idr,
    /// SEI (type 6).
    Sei,
    /// SPS (type 7).
    Sps,
    /// PPS (type 8).
    Pps,
    /// Access unit delimiter (type 9).
    Aud,
    /// Any other type, kept so nothing is silently reinterpreted.
    Other(u8),
}

impl NalType {
    /// Decodes the type from the first byte of a NAL unit (the NAL header).
    pub fn from_header(header: u8) -> Self {
        match header & 0x1f {
            nal_type::SLICE => NalType::Slice,
            t @ 2..=4 => NalType::Partition(t),
            nal_type::IDR => NalType::Idr,
            nal_type::SEI => NalType::Sei,
            nal_type::SPS => NalType::Sps,
            nal_type::PPS => NalType::Pps,
            nal_type::AUD => NalType::Aud,
            t => NalType::Other(t),
        }
    }

    /// True for slice data (types 1–5), which is what makes a picture.
    pub fn is_vcl(self) -> bool {
        matches!(self, NalType::Slice | NalType::Partition(_) | NalType::Idr)
    }
}

/// Errors from parsing H.264 structures; each names the field or input that was bad.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum H264Error {
    /// The input ended while reading `field`.
    #[error("H.264 data truncated while reading {field}")]
    Truncated {
        /// The syntax element being read.
        field: &'static str,
    },
    /// An Exp-Golomb code longer than 32 bits: corrupt data.
    #[error("invalid Exp-Golomb code for {field}")]
    InvalidExpGolomb {
        /// The syntax element being read.
        field: &'static str,
    },
    /// A field held a value outside what the spec (or any sane stream) allows.
    #[error("invalid value {value} for {field}")]
    InvalidValue {
        /// The syntax element.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// The NAL given as an SPS (or PPS) had another type.
    #[error("expected NAL type {expected}, found {found}")]
    WrongNalType {
        /// NAL type wanted.
        expected: u8,
        /// NAL type found.
        found: u8,
    },
    /// A NAL unit too large for a 16-bit length field in the decoder configuration record.
    #[error("{what} of {len} bytes does not fit the AVC decoder configuration record")]
    TooLarge {
        /// Which parameter set.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
}

/// Iterator over the NAL units of an Annex-B buffer, without start codes.
///
/// Accepts 3- and 4-byte start codes; bytes before the first start code are ignored and trailing
/// zero bytes (the leading zero of a 4-byte start code, `trailing_zero_8bits`) are trimmed.
/// Empty NAL units are skipped.
#[derive(Debug, Clone)]
pub struct NalUnits<'a> {
    rest: &'a [u8],
}

/// Iterates the NAL units of an Annex-B buffer; see [`NalUnits`].
pub fn nal_units(annexb: &[u8]) -> NalUnits<'_> {
    let rest = match find_start_code(annexb, 0) {
        Some(i) => &annexb[i + 3..],
        None => &[],
    };
    NalUnits { rest }
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let (nal, rest) = match find_start_code(self.rest, 0) {
                Some(i) => (&self.rest[..i], &self.rest[i + 3..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            let nal = trim_trailing_zeros(nal);
            if !nal.is_empty() {
                return Some(nal);
            }
        }
        None
    }
}

/// Position of the next `00 00 01` at or after `from`.
///
/// Every frame is cut into NAL units on its way out (a 4 Mbit/s stream is 16 KB a frame), and a
/// byte-by-byte window search was the RTMP sink's largest cost per frame; this jumps between
/// `01` bytes with SIMD (`memchr`) and checks the two bytes before each.
fn find_start_code(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from.checked_add(2)?;
    // Every turn moves `at` past one `01` byte, so this ends.
    while at < buf.len() {
        let one = at + memchr::memchr(1, &buf[at..])?;
        if buf[one - 1] == 0 && buf[one - 2] == 0 {
            return Some(one - 2);
        }
        at = one + 1;
    }
    None
}

fn trim_trailing_zeros(nal: &[u8]) -> &[u8] {
    let end = nal.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    &nal[..end]
}

/// One access unit (one picture plus its parameter sets/SEI) cut from an Annex-B stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// The access unit in Annex-B form, each NAL re-emitted with a 4-byte start code.
    pub data: Bytes,
    /// True when the unit contains an IDR slice, i.e. a decoder (or a reconnected sink) can
    /// start here.
    pub idr: bool,
}

impl AccessUnit {
    /// The NAL units of this access unit, without start codes.
    pub fn nals(&self) -> NalUnits<'_> {
        nal_units(&self.data)
    }
}

/// Default bound on an access unit (and on a single NAL), generous for 4K intra frames.
pub const DEFAULT_MAX_AU_SIZE: usize = 8 * 1024 * 1024;

const START_CODE: [u8; 4] = [0, 0, 0, 1];

#[derive(Debug, Default)]
struct PartialAu {
    data: Vec<u8>,
    has_vcl: bool,
    idr: bool,
    /// Set when the unit grew past the bound: its bytes are gone and the rest of it is dropped.
    poisoned: bool,
    /// Tag of the chunk that carried the unit's first NAL (see [`AccessUnitSplitter::push_tagged`]).
    tag: Option<u64>,
}

/// Sans-IO splitter that turns an Annex-B byte stream, fed in arbitrary chunks, into access
/// units.
///
/// Sources such as a payload app's FIFO deliver a byte stream, not frames; sinks need whole
/// pictures with a keyframe flag. A new unit starts on an AUD, on SPS/PPS/SEI after slice data,
/// or on a slice with `first_mb_in_slice == 0` after slice data. Units larger than the bound are
/// dropped whole (and counted) rather than buffered forever. [`for_hevc`](Self::for_hevc) makes
/// one for H.265 byte streams, with H.265's rules (AUD; VPS/SPS/PPS/prefix SEI after slice data;
/// a slice with `first_slice_segment_in_pic_flag`) and IRAP pictures as keyframes.
///
/// Contract: after each [`push`](Self::push), call [`pull`](Self::pull) until it returns `None`.
#[derive(Debug)]
pub struct AccessUnitSplitter {
    buf: Vec<u8>,
    /// Start of the NAL currently being collected in `buf`, once a start code has been seen.
    nal_start: Option<usize>,
    /// Where the next start-code search begins, so each byte is scanned about once.
    scan_from: usize,
    /// Bytes drained from the front of `buf` since the start, so positions can be absolute.
    consumed: u64,
    /// Absolute stream offset where each tagged chunk began, oldest first.
    tags: VecDeque<(u64, u64)>,
    /// Tag of the NAL at `nal_start`: of the chunk that held its start code's first byte.
    nal_tag: Option<u64>,
    /// The unit-boundary rules were already applied to the NAL at `nal_start` from its first
    /// bytes, so the unit before it completed without waiting for this NAL to end.
    begun: bool,
    builder: AuBuilder,
}

/// How many first bytes of a NAL unit decide whether it begins a new access unit: the header
/// and the first byte of a slice header (H.264 has a one-byte header, H.265 two).
fn head_len(hevc: bool) -> usize {
    if hevc {
        3
    } else {
        2
    }
}

/// The access-unit side of the splitter, apart from `buf` so NALs can be borrowed from `buf`
/// while the unit grows (no per-NAL copy).
#[derive(Debug)]
struct AuBuilder {
    cur: PartialAu,
    ready: VecDeque<(AccessUnit, Option<u64>)>,
    max_au_size: usize,
    dropped: u64,
    /// Tag of the NAL being added, handed to a unit that starts with it.
    nal_tag: Option<u64>,
    /// H.265 rules instead of H.264's.
    hevc: bool,
}

impl Default for AccessUnitSplitter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_AU_SIZE)
    }
}

impl AccessUnitSplitter {
    /// Creates a splitter that drops any access unit (or NAL) larger than `max_au_size` bytes.
    pub fn new(max_au_size: usize) -> Self {
        Self {
            buf: Vec::new(),
            nal_start: None,
            scan_from: 0,
            consumed: 0,
            tags: VecDeque::new(),
            nal_tag: None,
            begun: false,
            builder: AuBuilder {
                cur: PartialAu::default(),
                ready: VecDeque::new(),
                max_au_size: max_au_size.max(16),
                dropped: 0,
                nal_tag: None,
                hevc: false,
            },
        }
    }

    /// A splitter for an H.265 byte stream, with the default size bound; the `idr` flag of its
    /// units marks IRAP pictures.
    pub fn for_hevc() -> Self {
        let mut s = Self::default();
        s.builder.hevc = true;
        s
    }

    /// Feeds the next chunk of the byte stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
        while let Some(sc) = find_start_code(&self.buf, self.scan_from) {
            if let Some(start) = self.nal_start {
                self.builder.nal_tag = self.nal_tag;
                self.builder
                    .on_nal(trim_trailing_zeros(&self.buf[start..sc]), self.begun);
            }
            self.begun = false;
            // A 4-byte start code begins one byte earlier; its sender put it there.
            let lead = if sc > 0 && self.buf[sc - 1] == 0 {
                sc - 1
            } else {
                sc
            };
            self.nal_tag = self.tag_at(self.consumed + lead as u64);
            self.nal_start = Some(sc + 3);
            self.scan_from = sc + 3;
        }
        // Keep the last two bytes scannable: they may be the start of a split start code.
        self.scan_from = self.scan_from.max(self.buf.len().saturating_sub(2));
        // Two bytes of a NAL (header and the start of a slice header) say whether it begins a
        // new unit: complete the previous unit now instead of when this NAL ends, which in a
        // stream without AUDs would add a whole frame interval of latency.
        if let Some(start) = self.nal_start {
            let n = head_len(self.builder.hevc);
            if !self.begun && self.buf.len() >= start + n {
                let head = &self.buf[start..start + n];
                // Not while the head could still be the zeros of the next start code.
                if head[..2] != [0, 0] {
                    self.builder.nal_tag = self.nal_tag;
                    self.builder.begin_nal(head);
                    self.begun = true;
                }
            }
        }
        self.compact();
        self.bound_pending();
        self.prune_tags();
    }

    /// Feeds the next chunk with a tag (a timestamp, for the payload feed): each access unit
    /// pulled with [`pull_tagged`](Self::pull_tagged) carries the tag of the chunk that held
    /// the start code of its first NAL, however the stream was cut into chunks.
    pub fn push_tagged(&mut self, chunk: &[u8], tag: u64) {
        let at = self.consumed + self.buf.len() as u64;
        self.tags.push_back((at, tag));
        self.push(chunk);
    }

    /// Takes the next complete access unit, if any.
    pub fn pull(&mut self) -> Option<AccessUnit> {
        self.builder.ready.pop_front().map(|(au, _)| au)
    }

    /// Takes the next complete access unit with its tag (`None` when it was fed untagged).
    pub fn pull_tagged(&mut self) -> Option<(AccessUnit, Option<u64>)> {
        self.builder.ready.pop_front()
    }

    /// The tag of the chunk holding absolute stream offset `abs`.
    fn tag_at(&self, abs: u64) -> Option<u64> {
        self.tags
            .iter()
            .rev()
            .find(|(start, _)| *start <= abs)
            .or(self.tags.front())
            .map(|(_, tag)| *tag)
    }

    /// Ends the stream: the last NAL and access unit are completed and become pullable.
    pub fn flush(&mut self) {
        if let Some(start) = self.nal_start.take() {
            self.builder.nal_tag = self.nal_tag;
            self.builder
                .on_nal(trim_trailing_zeros(&self.buf[start..]), self.begun);
        }
        self.begun = false;
        self.consumed += self.buf.len() as u64;
        self.tags.clear();
        self.buf.clear();
        self.scan_from = 0;
        self.builder.finish_au();
    }

    /// How many access units were dropped for exceeding the size bound.
    pub fn dropped(&self) -> u64 {
        self.builder.dropped
    }

    fn compact(&mut self) {
        let keep_from = match self.nal_start {
            Some(s) => s,
            // No start code yet: only a possible partial start code is worth keeping.
            None => self.buf.len().saturating_sub(2),
        };
        if keep_from > 0 {
            self.consumed += keep_from as u64;
            self.buf.drain(..keep_from);
            self.scan_from -= keep_from.min(self.scan_from);
            self.nal_start = self.nal_start.map(|s| s - keep_from);
        }
    }

    /// A single NAL that never ends would grow `buf` forever: drop it and the unit it is in.
    fn bound_pending(&mut self) {
        let Some(start) = self.nal_start else { return };
        if self.buf.len() - start > self.builder.max_au_size {
            // Let the NAL's header still mark unit boundaries, as it would if it had completed.
            let head_end = (start + head_len(self.builder.hevc)).min(self.buf.len());
            if !self.begun {
                self.builder.begin_nal(&self.buf[start..head_end]);
            }
            self.begun = false;
            self.builder.poison();
            self.nal_start = None;
            let keep = self.buf.len().saturating_sub(2);
            self.consumed += keep as u64;
            self.buf.drain(..keep);
            self.scan_from = 0;
        }
    }

    /// Forgets the tags of chunks that no pending byte belongs to any more, so the list stays
    /// as short as the bytes held.
    fn prune_tags(&mut self) {
        let live = self.consumed;
        while self.tags.len() > 1 && self.tags.get(1).is_some_and(|(s, _)| *s <= live) {
            self.tags.pop_front();
        }
    }
}

impl AuBuilder {
    fn poison(&mut self) {
        if !self.cur.poisoned {
            self.cur.poisoned = true;
            self.dropped += 1;
        }
        self.cur.data = Vec::new();
    }

    fn on_nal(&mut self, nal: &[u8], begun: bool) {
        if nal.is_empty() {
            return;
        }
        if !begun {
            self.begin_nal(nal);
        }
        if self.cur.poisoned {
            return;
        }
        if self.cur.data.len() + START_CODE.len() + nal.len() > self.max_au_size {
            self.poison();
            return;
        }
        self.cur.data.extend_from_slice(&START_CODE);
        self.cur.data.extend_from_slice(nal);
    }

    /// Applies the unit-boundary rules for a NAL given its first bytes.
    fn begin_nal(&mut self, nal: &[u8]) {
        if self.hevc {
            return self.begin_hevc_nal(nal);
        }
        let Some(&header) = nal.first() else { return };
        let ty = NalType::from_header(header);
        let starts_new = match ty {
            NalType::Aud => true,
            NalType::Sps | NalType::Pps | NalType::Sei => self.cur.has_vcl,
            NalType::Other(14..=18) => self.cur.has_vcl,
            t if t.is_vcl() => {
                // first_mb_in_slice is ue(v); it is 0 exactly when its first bit is 1.
                self.cur.has_vcl && nal.get(1).is_some_and(|b| b & 0x80 != 0)
            }
            _ => false,
        };
        if starts_new {
            self.finish_au();
        }
        if self.cur.tag.is_none() {
            self.cur.tag = self.nal_tag;
        }
        if ty.is_vcl() {
            self.cur.has_vcl = true;
        }
        if ty == NalType::Idr {
            self.cur.idr = true;
        }
    }

    /// [`begin_nal`](Self::begin_nal) with H.265's rules (ITU-T H.265 7.4.2.4.4).
    fn begin_hevc_nal(&mut self, nal: &[u8]) {
        let Some(ty) = crate::media::hevc::nal_type(nal) else {
            return;
        };
        let vcl = ty < 32;
        let starts_new = match ty {
            35 => true, // AUD
            // VPS, SPS, PPS, prefix SEI and the reserved types that may precede a picture.
            32..=34 | 39 | 41..=44 | 48..=55 => self.cur.has_vcl,
            // first_slice_segment_in_pic_flag is the slice header's first bit.
            _ if vcl => self.cur.has_vcl && nal.get(2).is_some_and(|b| b & 0x80 != 0),
            _ => false,
        };
        if starts_new {
            self.finish_au();
        }
        if self.cur.tag.is_none() {
            self.cur.tag = self.nal_tag;
        }
        if vcl {
            self.cur.has_vcl = true;
            self.cur.idr |= crate::media::hevc::is_irap(ty);
        }
    }

    fn finish_au(&mut self) {
        let au = std::mem::take(&mut self.cur);
        if !au.poisoned && !au.data.is_empty() {
            self.ready.push_back((
                AccessUnit {
                    data: Bytes::from(au.data),
                    idr: au.idr,
                },
                au.tag,
            ));
        }
    }
}

/// Bit reader over an RBSP (emulation prevention bytes already removed).
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn bit(&mut self, field: &'static str) -> Result<u32, H264Error> {
        let byte = self
            .data
            .get(self.pos / 8)
            .ok_or(H264Error::Truncated { field })?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(bit))
    }

    pub(crate) fn bits(&mut self, n: u32, field: &'static str) -> Result<u32, H264Error> {
        let mut v = 0u32;
        for _ in 0..n {
            v = (v << 1) | self.bit(field)?;
        }
        Ok(v)
    }

    pub(crate) fn ue(&mut self, field: &'static str) -> Result<u32, H264Error> {
        let mut zeros = 0u32;
        while self.bit(field)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(H264Error::InvalidExpGolomb { field });
            }
        }
        let rest = self.bits(zeros, field)?;
        let v = (1u64 << zeros) - 1 + u64::from(rest);
        u32::try_from(v).map_err(|_| H264Error::InvalidExpGolomb { field })
    }

    fn se(&mut self, field: &'static str) -> Result<i64, H264Error> {
        let k = i64::from(self.ue(field)?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

/// Removes emulation prevention bytes (`00 00 03` → `00 00`).
pub(crate) fn nal_to_rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// The parts of a sequence parameter set that containers and metadata need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    /// profile_idc (66 baseline, 77 main, 100 high, ...).
    pub profile_idc: u8,
    /// The constraint_set flags byte, copied verbatim into the AVC configuration record.
    pub constraint_flags: u8,
    /// level_idc (e.g. 31 for level 3.1).
    pub level_idc: u8,
    /// Displayed width in pixels, after frame cropping.
    pub width: u32,
    /// Displayed height in pixels, after frame cropping.
    pub height: u32,
    /// chroma_format_idc (1 = 4:2:0, the default when the SPS does not say).
    pub chroma_format_idc: u8,
    /// bit_depth_luma_minus8 (0 for 8-bit video).
    pub bit_depth_luma_minus8: u8,
    /// bit_depth_chroma_minus8 (0 for 8-bit video).
    pub bit_depth_chroma_minus8: u8,
}

/// Profiles whose SPS carries chroma format and bit depth, and whose AVC configuration record
/// must repeat them (ISO/IEC 14496-15 §5.3.3.1.2).
fn has_chroma_fields(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

impl Sps {
    /// Parses an SPS NAL unit (header byte included, no start code).
    pub fn parse(nal: &[u8]) -> Result<Self, H264Error> {
        let header = *nal.first().ok_or(H264Error::Truncated {
            field: "nal_unit_header",
        })?;
        if header & 0x1f != nal_type::SPS {
            return Err(H264Error::WrongNalType {
                expected: nal_type::SPS,
                found: header & 0x1f,
            });
        }
        let rbsp = nal_to_rbsp(&nal[1..]);
        let mut r = BitReader::new(&rbsp);
        let profile_idc = r.bits(8, "profile_idc")? as u8;
        let constraint_flags = r.bits(8, "constraint_set_flags")? as u8;
        let level_idc = r.bits(8, "level_idc")? as u8;
        let sps_id = r.ue("seq_parameter_set_id")?;
        if sps_id > 31 {
            return Err(H264Error::InvalidValue {
                field: "seq_parameter_set_id",
                value: sps_id.into(),
            });
        }
        let mut chroma_format_idc = 1;
        let mut separate_colour_plane = false;
        let (mut depth_luma, mut depth_chroma) = (0, 0);
        if has_chroma_fields(profile_idc) {
            chroma_format_idc = r.ue("chroma_format_idc")?;
            if chroma_format_idc > 3 {
                return Err(H264Error::InvalidValue {
                    field: "chroma_format_idc",
                    value: chroma_format_idc.into(),
                });
            }
            if chroma_format_idc == 3 {
                separate_colour_plane = r.bit("separate_colour_plane_flag")? == 1;
            }
            depth_luma = r.ue("bit_depth_luma_minus8")?;
            depth_chroma = r.ue("bit_depth_chroma_minus8")?;
            for (field, value) in [
                ("bit_depth_luma_minus8", depth_luma),
                ("bit_depth_chroma_minus8", depth_chroma),
            ] {
                if value > 6 {
                    return Err(H264Error::InvalidValue {
                        field,
                        value: value.into(),
                    });
                }
            }
            r.bit("qpprime_y_zero_transform_bypass_flag")?;
            if r.bit("seq_scaling_matrix_present_flag")? == 1 {
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.bit("seq_scaling_list_present_flag")? == 1 {
                        skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }
        r.ue("log2_max_frame_num_minus4")?;
        match r.ue("pic_order_cnt_type")? {
            0 => {
                r.ue("log2_max_pic_order_cnt_lsb_minus4")?;
            }
            1 => {
                r.bit("delta_pic_order_always_zero_flag")?;
                r.se("offset_for_non_ref_pic")?;
                r.se("offset_for_top_to_bottom_field")?;
                let n = r.ue("num_ref_frames_in_pic_order_cnt_cycle")?;
                if n > 255 {
                    return Err(H264Error::InvalidValue {
                        field: "num_ref_frames_in_pic_order_cnt_cycle",
                        value: n.into(),
                    });
                }
                for _ in 0..n {
                    r.se("offset_for_ref_frame")?;
                }
            }
            2 => {}
            other => {
                return Err(H264Error::InvalidValue {
                    field: "pic_order_cnt_type",
                    value: other.into(),
                })
            }
        }
        r.ue("max_num_ref_frames")?;
        r.bit("gaps_in_frame_num_value_allowed_flag")?;
        let width_mbs = u64::from(r.ue("pic_width_in_mbs_minus1")?) + 1;
        let height_map_units = u64::from(r.ue("pic_height_in_map_units_minus1")?) + 1;
        let frame_mbs_only = u64::from(r.bit("frame_mbs_only_flag")?);
        if frame_mbs_only == 0 {
            r.bit("mb_adaptive_frame_field_flag")?;
        }
        r.bit("direct_8x8_inference_flag")?;
        let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
        if r.bit("frame_cropping_flag")? == 1 {
            crop_l = r.ue("frame_crop_left_offset")?.into();
            crop_r = r.ue("frame_crop_right_offset")?.into();
            crop_t = r.ue("frame_crop_top_offset")?.into();
            crop_b = r.ue("frame_crop_bottom_offset")?.into();
        }
        let chroma_array_type = if separate_colour_plane {
            0
        } else {
            chroma_format_idc
        };
        let (crop_unit_x, crop_unit_y) = match chroma_array_type {
            0 => (1, 2 - frame_mbs_only),
            1 => (2, 2 * (2 - frame_mbs_only)),
            2 => (2, 2 - frame_mbs_only),
            _ => (1, 2 - frame_mbs_only),
        };
        let full_w = width_mbs * 16;
        let full_h = (2 - frame_mbs_only) * height_map_units * 16;
        let crop_w = crop_unit_x * (crop_l + crop_r);
        let crop_h = crop_unit_y * (crop_t + crop_b);
        let width = full_w
            .checked_sub(crop_w)
            .filter(|&w| w > 0)
            .and_then(|w| u32::try_from(w).ok())
            .ok_or(H264Error::InvalidValue {
                field: "frame_crop_left/right_offset",
                value: crop_w,
            })?;
        let height = full_h
            .checked_sub(crop_h)
            .filter(|&h| h > 0)
            .and_then(|h| u32::try_from(h).ok())
            .ok_or(H264Error::InvalidValue {
                field: "frame_crop_top/bottom_offset",
                value: crop_h,
            })?;
        Ok(Sps {
            profile_idc,
            constraint_flags,
            level_idc,
            width,
            height,
            // Range-checked above: chroma_format_idc <= 3, bit depths <= 6.
            chroma_format_idc: chroma_format_idc as u8,
            bit_depth_luma_minus8: depth_luma as u8,
            bit_depth_chroma_minus8: depth_chroma as u8,
        })
    }
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), H264Error> {
    let mut last = 8i64;
    let mut next = 8i64;
    for _ in 0..size {
        if next != 0 {
            let delta = r.se("delta_scale")?;
            next = (last + delta).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Builds an AVCDecoderConfigurationRecord (ISO/IEC 14496-15) from one SPS and one PPS NAL
/// (header byte included, no start codes), as the FLV/MP4 sequence header carries it.
///
/// Uses 4-byte NAL length fields, matching [`annexb_to_avcc`]. For High and other profiles
/// whose SPS carries chroma format and bit depth, the record ends with those fields as the spec
/// requires (strict demuxers reject records without them), so the SPS must then parse.
pub fn avc_decoder_configuration_record(sps: &[u8], pps: &[u8]) -> Result<Vec<u8>, H264Error> {
    if sps.len() < 4 {
        return Err(H264Error::Truncated {
            field: "SPS profile/level bytes",
        });
    }
    if sps[0] & 0x1f != nal_type::SPS {
        return Err(H264Error::WrongNalType {
            expected: nal_type::SPS,
            found: sps[0] & 0x1f,
        });
    }
    match pps.first() {
        None => return Err(H264Error::Truncated { field: "PPS" }),
        Some(h) if h & 0x1f != nal_type::PPS => {
            return Err(H264Error::WrongNalType {
                expected: nal_type::PPS,
                found: h & 0x1f,
            })
        }
        Some(_) => {}
    }
    let sps_len = u16::try_from(sps.len()).map_err(|_| H264Error::TooLarge {
        what: "SPS",
        len: sps.len(),
    })?;
    let pps_len = u16::try_from(pps.len()).map_err(|_| H264Error::TooLarge {
        what: "PPS",
        len: pps.len(),
    })?;
    let mut out = Vec::with_capacity(11 + sps.len() + pps.len());
    out.push(1); // configurationVersion
    out.extend_from_slice(&sps[1..4]); // profile, constraint flags, level
    out.push(0xff); // reserved 6 bits + lengthSizeMinusOne = 3
    out.push(0xe1); // reserved 3 bits + numOfSequenceParameterSets = 1
    out.extend_from_slice(&sps_len.to_be_bytes());
    out.extend_from_slice(sps);
    out.push(1); // numOfPictureParameterSets
    out.extend_from_slice(&pps_len.to_be_bytes());
    out.extend_from_slice(pps);
    if has_chroma_fields(sps[1]) {
        let parsed = Sps::parse(sps)?;
        out.push(0xfc | parsed.chroma_format_idc);
        out.push(0xf8 | parsed.bit_depth_luma_minus8);
        out.push(0xf8 | parsed.bit_depth_chroma_minus8);
        out.push(0); // numOfSequenceParameterSetExt
    }
    Ok(out)
}

/// Appends an Annex-B access unit to `out` as 4-byte length-prefixed NAL units (AVCC form).
///
/// AUD, SPS and PPS are dropped: in FLV/MP4 the parameter sets travel in the sequence header and
/// delimiters have no meaning. A NAL larger than 4 GiB (impossible in practice) is skipped.
pub fn annexb_to_avcc(au: &[u8], out: &mut Vec<u8>) {
    for nal in nal_units(au) {
        match NalType::from_header(nal[0]) {
            NalType::Aud | NalType::Sps | NalType::Pps => continue,
            _ => {}
        }
        let Ok(len) = u32::try_from(nal.len()) else {
            continue;
        };
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(nal);
    }
}

/// SEI payload types dockcast acts on (ITU-T H.264 Annex D).
pub mod sei_type {
    /// `user_data_unregistered`: a 16-byte UUID and bytes private to whoever wrote them.
    pub const USER_DATA_UNREGISTERED: u32 = 5;
    /// `recovery_point`: a decoder may start here (gradual decoding refresh, no IDR needed).
    pub const RECOVERY_POINT: u32 = 6;
}

/// One message of an SEI NAL unit; the feed decides from it what to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeiMessage {
    /// `payloadType`.
    pub payload_type: u32,
    /// The payload in RBSP form (emulation prevention removed).
    pub payload: Vec<u8>,
}

/// Parses the messages of an SEI NAL unit (header byte included, no start code).
///
/// Payload feeds carry SEI that other decoders choke on precisely because it is malformed, so a
/// message whose declared size runs past the NAL is an error, not a guess.
pub fn sei_messages(nal: &[u8]) -> Result<Vec<SeiMessage>, H264Error> {
    let header = *nal.first().ok_or(H264Error::Truncated {
        field: "nal_unit_header",
    })?;
    if header & 0x1f != nal_type::SEI {
        return Err(H264Error::WrongNalType {
            expected: nal_type::SEI,
            found: header & 0x1f,
        });
    }
    sei_body_messages(&nal[1..])
}

/// The messages of an SEI NAL unit's body (after its header). H.265 codes SEI messages the same
/// way after its two-byte header, so the H.265 paths use this too.
pub fn sei_body_messages(body: &[u8]) -> Result<Vec<SeiMessage>, H264Error> {
    let truncated = H264Error::Truncated {
        field: "sei_message",
    };
    let rbsp = nal_to_rbsp(body);
    let mut pos = 0;
    let mut out = Vec::new();
    // more_rbsp_data(): what is left is not only the stop bit and its padding.
    while pos < rbsp.len() && !(rbsp[pos] == 0x80 && rbsp[pos + 1..].iter().all(|&b| b == 0)) {
        let mut ff_coded = || -> Result<u32, H264Error> {
            let mut v = 0u32;
            loop {
                let b = *rbsp.get(pos).ok_or(H264Error::Truncated {
                    field: "sei_message",
                })?;
                pos += 1;
                v = v.saturating_add(u32::from(b));
                if b != 0xff {
                    return Ok(v);
                }
            }
        };
        let payload_type = ff_coded()?;
        let size = ff_coded()? as usize;
        let payload = rbsp
            .get(pos..pos.saturating_add(size))
            .ok_or(truncated.clone())?;
        pos += size;
        out.push(SeiMessage {
            payload_type,
            payload: payload.to_vec(),
        });
    }
    Ok(out)
}

/// Builds an SEI NAL unit (header byte `header`) from messages, with emulation prevention.
pub fn build_sei(header: u8, messages: &[SeiMessage]) -> Vec<u8> {
    build_sei_with_header(&[header], messages)
}

/// [`build_sei`] with a header of any length (two bytes for H.265).
pub fn build_sei_with_header(header: &[u8], messages: &[SeiMessage]) -> Vec<u8> {
    let mut rbsp = Vec::new();
    for m in messages {
        for mut v in [m.payload_type as usize, m.payload.len()] {
            while v >= 255 {
                rbsp.push(0xff);
                v -= 255;
            }
            rbsp.push(v as u8);
        }
        rbsp.extend_from_slice(&m.payload);
    }
    rbsp.push(0x80);
    let mut nal = Vec::with_capacity(header.len() + rbsp.len() + rbsp.len() / 64);
    nal.extend_from_slice(header);
    let mut zeros = 0;
    for b in rbsp {
        if zeros >= 2 && b <= 3 {
            nal.push(3);
            zeros = 0;
        }
        nal.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    nal
}

/// What [`filter_sei`] decided for one SEI NAL unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeiFilter {
    /// Nothing to remove: pass the NAL on unchanged.
    Keep,
    /// Remove the whole NAL (every message matched, or it does not parse).
    Drop,
    /// Replace the NAL with this one, which holds only the messages kept.
    Rewrite(Vec<u8>),
}

/// Removes the messages `strip` selects from an SEI NAL unit. A NAL that does not parse is
/// dropped: it is what makes downstream decoders log errors, and nothing can use it.
pub fn filter_sei(nal: &[u8], strip: impl Fn(&SeiMessage) -> bool) -> SeiFilter {
    if nal.first().is_none_or(|h| h & 0x1f != nal_type::SEI) {
        return SeiFilter::Drop;
    }
    filter_sei_body(&nal[..1], &nal[1..], strip)
}

/// [`filter_sei`] for an SEI NAL unit given as its header (one byte for H.264, two for H.265)
/// and its body.
pub fn filter_sei_body(
    header: &[u8],
    body: &[u8],
    strip: impl Fn(&SeiMessage) -> bool,
) -> SeiFilter {
    let Ok(messages) = sei_body_messages(body) else {
        return SeiFilter::Drop;
    };
    let total = messages.len();
    let kept: Vec<SeiMessage> = messages.into_iter().filter(|m| !strip(m)).collect();
    match kept.len() {
        n if n == total => SeiFilter::Keep,
        0 => SeiFilter::Drop,
        _ => SeiFilter::Rewrite(build_sei_with_header(header, &kept)),
    }
}

/// True when `nal` is an SEI NAL unit holding a recovery point, where a decoder of a GDR
/// stream (one without IDRs) can start.
pub fn is_recovery_point(nal: &[u8]) -> bool {
    nal.first().is_some_and(|h| h & 0x1f == nal_type::SEI)
        && sei_messages(nal)
            .is_ok_and(|m| m.iter().any(|m| m.payload_type == sei_type::RECOVERY_POINT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tagged_units_carry_the_tag_of_their_first_start_code() {
        let mut s = AccessUnitSplitter::default();
        s.push_tagged(b"\0\0\0\x01\x67\x42\0\x1e\0\0\0\x01\x65\x88\x80", 1);
        s.push_tagged(b"\0\0\0\x01\x41\x9a\x01", 2);
        s.push_tagged(b"\x02\x03", 3);
        s.push_tagged(b"\0\0\0\x01\x41\x9a\x02", 4);
        s.push_tagged(b"\0", 5);
        s.push_tagged(b"\0\x01\x41\x9a\x03", 6);
        s.flush();
        let mut tags = Vec::new();
        while let Some((_, t)) = s.pull_tagged() {
            tags.push(t);
        }
        assert_eq!(tags, vec![Some(1), Some(2), Some(4), Some(5)]);
    }

    // x264 baseline 640x360 SPS (crops 368 → 360) and its PPS.
    const SPS_640X360: [u8; 25] = [
        0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x2f, 0xf9, 0x70, 0x11, 0x00, 0x00, 0x03, 0x00,
        0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x16, 0x2e, 0x48,
    ];
    const PPS: [u8; 5] = [0x68, 0xcb, 0x83, 0xcb, 0x20];

    fn collect_all(stream: &[u8], chunks: &[usize]) -> Vec<AccessUnit> {
        let mut s = AccessUnitSplitter::default();
        let mut out = Vec::new();
        let mut rest = stream;
        let mut i = 0;
        while !rest.is_empty() {
            let n = chunks
                .get(i)
                .copied()
                .unwrap_or(rest.len())
                .clamp(1, rest.len());
            s.push(&rest[..n]);
            rest = &rest[n..];
            i += 1;
            while let Some(au) = s.pull() {
                out.push(au);
            }
        }
        s.flush();
        while let Some(au) = s.pull() {
            out.push(au);
        }
        out
    }

    #[test]
    fn nal_units_handles_3_and_4_byte_start_codes() {
        let buf = [
            0xff, 0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 0, 1, 0x65, 0x88, 0, 0,
        ];
        let nals: Vec<&[u8]> = nal_units(&buf).collect();
        assert_eq!(nals, vec![&[0x09, 0xf0][..], &[0x67, 0x42], &[0x65, 0x88]]);
        assert_eq!(nal_units(&[1, 2, 3]).count(), 0);
    }

    #[test]
    fn sps_640x360_baseline() {
        let sps = Sps::parse(&SPS_640X360).expect("valid SPS");
        assert_eq!(
            sps,
            Sps {
                profile_idc: 66,
                constraint_flags: 0xc0,
                level_idc: 30,
                width: 640,
                height: 360,
                chroma_format_idc: 1,
                bit_depth_luma_minus8: 0,
                bit_depth_chroma_minus8: 0,
            }
        );
    }

    #[test]
    fn sps_high_profile_1080p() {
        // x264 High 4:2:0 1920x1080 (1088 cropped by 8).
        let nal = [
            0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0xc0, 0x44, 0x00,
            0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf0, 0x3c, 0x60, 0xc6, 0x58,
        ];
        let sps = Sps::parse(&nal).expect("valid SPS");
        assert_eq!((sps.profile_idc, sps.level_idc), (100, 40));
        assert_eq!((sps.width, sps.height), (1920, 1080));
        let rec = avc_decoder_configuration_record(&nal, &[0x68, 0xeb]).expect("record");
        assert_eq!(rec[..6], [1, 0x64, 0x00, 0x28, 0xff, 0xe1]);
        assert_eq!(rec[rec.len() - 4..], [0xfd, 0xf8, 0xf8, 0]);
    }

    #[test]
    fn sps_high422_10bit_and_high444() {
        // x264 High 4:2:2 10-bit 1280x720.
        let nal = [
            0x67, 0x7a, 0x00, 0x1f, 0xb6, 0xcd, 0x94, 0x05, 0x00, 0x5b, 0xb0, 0x11, 0x00, 0x00,
            0x03, 0x00, 0x01, 0x00, 0x00, 0x03, 0x00, 0x3c, 0x0f, 0x18, 0x31, 0x96,
        ];
        let sps = Sps::parse(&nal).expect("valid SPS");
        assert_eq!((sps.profile_idc, sps.width, sps.height), (122, 1280, 720));
        assert_eq!(
            (
                sps.chroma_format_idc,
                sps.bit_depth_luma_minus8,
                sps.bit_depth_chroma_minus8
            ),
            (2, 2, 2)
        );
        let rec = avc_decoder_configuration_record(&nal, &[0x68, 0xeb]).expect("record");
        assert_eq!(rec[rec.len() - 4..], [0xfe, 0xfa, 0xfa, 0]);
        // x264 High 4:4:4 Predictive 320x240.
        let nal = [
            0x67, 0xf4, 0x00, 0x0d, 0x91, 0x9b, 0x28, 0x28, 0x3f, 0x60, 0x22, 0x00, 0x00, 0x03,
            0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x78, 0x1e, 0x28, 0x53, 0x2c,
        ];
        let sps = Sps::parse(&nal).expect("valid SPS");
        assert_eq!((sps.profile_idc, sps.width, sps.height), (244, 320, 240));
        assert_eq!(sps.chroma_format_idc, 3);
    }

    #[test]
    fn sps_errors_are_typed() {
        assert_eq!(
            Sps::parse(&[]),
            Err(H264Error::Truncated {
                field: "nal_unit_header"
            })
        );
        assert_eq!(
            Sps::parse(&PPS),
            Err(H264Error::WrongNalType {
                expected: 7,
                found: 8
            })
        );
        assert!(matches!(
            Sps::parse(&SPS_640X360[..6]),
            Err(H264Error::Truncated { .. })
        ));
        assert!(matches!(
            Sps::parse(&[0x67, 0x42, 0, 0x1e, 0, 0, 0, 0, 0, 0]),
            Err(H264Error::InvalidExpGolomb { .. } | H264Error::Truncated { .. })
        ));
    }

    #[test]
    fn decoder_configuration_record_bytes() {
        let rec = avc_decoder_configuration_record(&SPS_640X360[..5], &PPS).expect("record");
        assert_eq!(
            rec,
            vec![
                1, 0x42, 0xc0, 0x1e, 0xff, 0xe1, 0, 5, 0x67, 0x42, 0xc0, 0x1e, 0xd9, 1, 0, 5, 0x68,
                0xcb, 0x83, 0xcb, 0x20
            ]
        );
        assert!(avc_decoder_configuration_record(&[0x67, 1], &PPS).is_err());
        assert!(avc_decoder_configuration_record(&SPS_640X360, &[]).is_err());
        assert!(avc_decoder_configuration_record(&PPS, &PPS).is_err());
    }

    #[test]
    fn avcc_drops_aud_and_parameter_sets() {
        let au = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x06,
            0x05, 0, 0, 1, 0x65, 0x88, 0x84,
        ];
        let mut out = vec![0xaa];
        annexb_to_avcc(&au, &mut out);
        assert_eq!(
            out,
            vec![0xaa, 0, 0, 0, 2, 0x06, 0x05, 0, 0, 0, 3, 0x65, 0x88, 0x84]
        );
    }

    fn stream_of_three_pictures() -> Vec<u8> {
        let mut s = Vec::new();
        // AU 1: SPS PPS SEI IDR(two slices)
        for nal in [
            &[0x67, 0x42, 0xc0][..],
            &[0x68, 0xce],
            &[0x06, 0x05, 0x01],
            &[0x65, 0x88, 0x11],
            &[0x65, 0x00, 0x22], // second slice: first_mb_in_slice != 0
        ] {
            s.extend_from_slice(&[0, 0, 0, 1]);
            s.extend_from_slice(nal);
        }
        // AU 2: P slice (3-byte start code)
        s.extend_from_slice(&[0, 0, 1, 0x41, 0x9a, 0x33]);
        // AU 3: AUD then P slice
        s.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x41, 0x9a, 0x44]);
        s
    }

    #[test]
    fn splitter_cuts_on_new_picture_parameter_sets_and_aud() {
        let aus = collect_all(&stream_of_three_pictures(), &[]);
        assert_eq!(aus.len(), 3);
        assert!(aus[0].idr && !aus[1].idr && !aus[2].idr);
        assert_eq!(aus[0].nals().count(), 5);
        assert_eq!(aus[1].data.as_ref(), &[0, 0, 0, 1, 0x41, 0x9a, 0x33][..]);
        assert_eq!(
            aus[2].data.as_ref(),
            &[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 0, 1, 0x41, 0x9a, 0x44][..]
        );
    }

    #[test]
    fn splitter_drops_oversized_units_and_recovers() {
        let mut stream = vec![0, 0, 0, 1, 0x65, 0x88];
        stream.extend(std::iter::repeat_n(0x55, 200));
        stream.extend_from_slice(&[0, 0, 0, 1, 0x41, 0x9a, 0x01]);
        let mut s = AccessUnitSplitter::new(64);
        for chunk in stream.chunks(7) {
            s.push(chunk);
        }
        s.flush();
        let aus: Vec<_> = std::iter::from_fn(|| s.pull()).collect();
        assert_eq!(s.dropped(), 1);
        assert_eq!(aus.len(), 1);
        assert_eq!(aus[0].data.as_ref(), &[0, 0, 0, 1, 0x41, 0x9a, 0x01][..]);
        // A stream that never has another start code must not grow the buffer without bound.
        let mut s = AccessUnitSplitter::new(64);
        s.push(&[0, 0, 1, 0x65]);
        for _ in 0..100 {
            s.push(&[0x77; 50]);
        }
        assert!(s.buf.len() <= 64 + 50);
    }

    proptest! {
        /// The memchr search finds what a plain window search finds, from any position, on
        /// inputs dense in zeros and ones (start codes, 4-byte start codes, trailing zeros).
        #[test]
        fn start_code_search_matches_a_window_search(
            data in proptest::collection::vec(
                proptest::sample::select(vec![0u8, 0, 0, 1, 1, 3, 0x65, 0xff]),
                0..300,
            ),
            from in 0usize..320,
        ) {
            let naive = data
                .get(from..)
                .and_then(|rest| rest.windows(3).position(|w| w == [0, 0, 1]))
                .map(|p| p + from);
            prop_assert_eq!(find_start_code(&data, from), naive);
        }
    }

    proptest! {
        #[test]
        fn splitter_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048),
                                 max in 0usize..512) {
            let mut s = AccessUnitSplitter::new(max);
            for chunk in data.chunks(37) {
                s.push(chunk);
                while s.pull().is_some() {}
            }
            s.flush();
            while s.pull().is_some() {}
        }

        #[test]
        fn sps_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Sps::parse(&data);
            let mut with_header = vec![0x67];
            with_header.extend_from_slice(&data);
            let _ = Sps::parse(&with_header);
            let _ = avc_decoder_configuration_record(&with_header, &data);
            let mut out = Vec::new();
            annexb_to_avcc(&data, &mut out);
        }

        #[test]
        fn hevc_units_match_the_whole_stream_splitter_however_chunked(
            nals in proptest::collection::vec(
                // VPS, SPS, PPS, prefix SEI, suffix SEI, IDR_W_RADL, CRA, TRAIL_R.
                (prop_oneof![Just(0x40u8), Just(0x42), Just(0x44), Just(0x4e), Just(0x50),
                             Just(0x26), Just(0x2a), Just(0x02)],
                 // Bodies without zero bytes hold no start code; the first byte carries
                 // first_slice_segment_in_pic_flag for slices.
                 proptest::collection::vec(1u8..=255, 1..40)),
                1..40),
            chunks in proptest::collection::vec(1usize..64, 0..200),
        ) {
            let mut stream = Vec::new();
            for (header, body) in &nals {
                stream.extend_from_slice(&[0, 0, 0, 1, *header, 0x01]);
                stream.extend_from_slice(body);
            }
            let mut s = AccessUnitSplitter::for_hevc();
            let mut got = Vec::new();
            let mut rest = &stream[..];
            for n in chunks.iter().chain(std::iter::repeat(&64)) {
                if rest.is_empty() {
                    break;
                }
                let n = (*n).clamp(1, rest.len());
                s.push(&rest[..n]);
                rest = &rest[n..];
                while let Some(au) = s.pull() {
                    got.push((au.data, au.idr));
                }
            }
            s.flush();
            while let Some(au) = s.pull() {
                got.push((au.data, au.idr));
            }
            // The whole-stream splitter leaves out a last unit that holds no picture.
            let picture = |au: &Bytes| {
                nal_units(au).any(|n| crate::media::hevc::nal_type(n).is_some_and(|t| t < 32))
            };
            if got.last().is_some_and(|(au, _)| !picture(au)) {
                got.pop();
            }
            prop_assert_eq!(got, crate::media::hevc::split_access_units(&stream));
        }

        #[test]
        fn chunking_does_not_change_access_units(
            nals in proptest::collection::vec(
                (prop_oneof![Just(0x09u8), Just(0x67), Just(0x68), Just(0x06), Just(0x65), Just(0x41)],
                 proptest::collection::vec(any::<u8>(), 1..40),
                 any::<bool>()),
                0..40),
            chunks in proptest::collection::vec(1usize..64, 0..200),
            noise in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut stream = noise;
            for (header, body, long_sc) in &nals {
                stream.extend_from_slice(if *long_sc { &[0, 0, 0, 1][..] } else { &[0, 0, 1] });
                stream.push(*header);
                stream.extend_from_slice(body);
            }
            let whole = collect_all(&stream, &[]);
            let chunked = collect_all(&stream, &chunks);
            prop_assert_eq!(whole, chunked);
        }
    }
}
