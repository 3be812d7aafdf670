//! The one walk over a JPEG's marker segments, which every reader in the crate uses.
//!
//! A JPEG is a sequence of segments: a marker (`FF` and a code) and, for most codes, a
//! two-byte length that counts itself and the body after it. Any number of `FF` fill
//! bytes may precede a marker's code; RSTn, SOI, EOI and TEM stand alone, with no length;
//! a scan header (SOS) is followed by entropy-coded data, in which every `FF` is followed
//! by `00` (a stuffed byte) or a restart marker, up to the next real marker. [`Markers`]
//! knows all of that, checks every length against the buffer and never reads past it:
//! its callers match on marker codes and bodies only.

use std::iter::FusedIterator;

/// TEM: a standalone marker (arithmetic-coding tests).
const TEM: u8 = 0x01;
/// SOF0: a baseline frame header.
pub(crate) const SOF0: u8 = 0xc0;
/// SOF2: a progressive, Huffman-coded frame header.
pub(crate) const SOF2: u8 = 0xc2;
/// DHT, JPG and DAC: codes among SOF0..SOF15 that are not frame headers.
const DHT: u8 = 0xc4;
const JPG: u8 = 0xc8;
const DAC: u8 = 0xcc;
/// SOF15: the last frame-header code.
const SOF15: u8 = 0xcf;
/// RST0..RST7: restart markers, standalone, also found inside entropy-coded data.
const RST0: u8 = 0xd0;
const RST7: u8 = 0xd7;
/// SOI: start of image.
pub(crate) const SOI: u8 = 0xd8;
/// EOI: end of image.
pub(crate) const EOI: u8 = 0xd9;
/// SOS: start of scan; entropy-coded data follows the segment.
pub(crate) const SOS: u8 = 0xda;
/// DQT: quantisation tables.
pub(crate) const DQT: u8 = 0xdb;
/// APP2: where an ICC profile is stored (`ICC_PROFILE\0`, split over segments).
pub(crate) const APP2: u8 = 0xe2;
/// APP14: Adobe's segment, with the colour transform of CMYK and YCCK files.
pub(crate) const APP14: u8 = 0xee;

/// Whether `marker` starts a frame header: SOF0 to SOF15, except the three codes among
/// them that are DHT, JPG and DAC.
pub(crate) fn is_frame_header(marker: u8) -> bool {
    matches!(marker, SOF0..=SOF15) && !matches!(marker, DHT | JPG | DAC)
}

/// Whether `marker` stands alone: no length, no body.
fn is_standalone(marker: u8) -> bool {
    matches!(marker, TEM | RST0..=RST7 | SOI | EOI)
}

/// One marker segment, whole within the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment<'a> {
    /// Offset of its first byte: its first fill byte if it has any, else its `FF`
    /// (what is cut out with the segment).
    pub(crate) start: usize,
    /// The marker code.
    pub(crate) marker: u8,
    /// The bytes after the length field, `length − 2` of them; empty for a standalone
    /// marker.
    pub(crate) body: &'a [u8],
    /// Offset just past the body (for SOS, where the entropy-coded data begins).
    pub(crate) end: usize,
}

/// Why the walk could not return a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MarkerError<'a> {
    /// The bytes do not open with SOI.
    #[error("no start-of-image marker")]
    NoStartOfImage,
    /// A byte other than `FF` where a marker must start.
    #[error("expected a marker at offset {at}")]
    NotAMarker {
        /// Offset of that byte.
        at: usize,
    },
    /// The bytes end inside a segment: in its fill bytes (no `marker` yet), its length
    /// field or its body.
    #[error("the bytes end inside the segment at offset {start}")]
    Truncated {
        /// Offset of the segment's first byte.
        start: usize,
        /// Its code, when the bytes reach it.
        marker: Option<u8>,
        /// What the bytes hold of its body (empty when the length field is cut): a head
        /// cut inside a frame header may still hold the image's size.
        partial: &'a [u8],
    },
    /// A length field under 2, which cannot count its own two bytes. Unlike the other
    /// errors this one does not end the walk: it goes on after the length field, as
    /// libjpeg skips such a segment (`length − 2` bytes, none here).
    #[error("marker {marker:#04x} at offset {start} declares a length under 2")]
    BadLength {
        /// Offset of the segment's first byte.
        start: usize,
        /// Its code.
        marker: u8,
    },
}

/// The segments of a JPEG stream, SOI first, each checked against the end of the buffer.
///
/// The entropy-coded data after a scan header is skipped, up to the next marker that is
/// neither a stuffed `FF 00` nor a restart marker, when the walk goes on. The walk ends
/// at the end of the bytes, or after an error other than
/// [`BadLength`](MarkerError::BadLength); every item starts further on than the one
/// before.
#[derive(Debug, Clone)]
pub(crate) struct Markers<'a> {
    data: &'a [u8],
    /// Where the next segment starts, or the entropy-coded data before it.
    at: usize,
    /// The last segment was a scan header: entropy-coded data comes before the next
    /// marker. Skipped only when needed, since it is most of the file.
    in_scan: bool,
    /// An error ended the walk.
    done: bool,
}

impl<'a> Markers<'a> {
    /// The walk over `data` from its first byte, which must be SOI's.
    pub(crate) fn new(data: &'a [u8]) -> Markers<'a> {
        Markers {
            data,
            at: 0,
            in_scan: false,
            done: false,
        }
    }

    /// After a scan header, skips its entropy-coded data; returns the offset where the
    /// walk stands: the next marker's, or the end of the bytes (the end of the scan, for
    /// whoever cuts scans out).
    pub(crate) fn skip_scan_data(&mut self) -> usize {
        if self.in_scan {
            self.in_scan = false;
            self.at = entropy_end(self.data, self.at);
        }
        self.at
    }

    fn fail(&mut self, err: MarkerError<'a>) -> Option<Result<Segment<'a>, MarkerError<'a>>> {
        self.done = true;
        Some(Err(err))
    }
}

impl<'a> Iterator for Markers<'a> {
    type Item = Result<Segment<'a>, MarkerError<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // A stream opens with SOI itself, not with fill bytes.
        if self.at == 0 && !self.data.starts_with(&[0xff, SOI]) {
            return self.fail(MarkerError::NoStartOfImage);
        }
        let data = self.data;
        let start = self.skip_scan_data();
        match data.get(start) {
            Some(0xff) => {}
            Some(_) => return self.fail(MarkerError::NotAMarker { at: start }),
            None => {
                // The bytes end between segments.
                self.done = true;
                return None;
            }
        }
        // Any number of fill bytes may come before the code.
        let Some(code_at) = data[start..].iter().position(|&b| b != 0xff) else {
            return self.fail(MarkerError::Truncated {
                start,
                marker: None,
                partial: &[],
            });
        };
        let code_at = start + code_at;
        let marker = data[code_at];
        let after_code = code_at + 1;
        if is_standalone(marker) {
            self.at = after_code;
            return Some(Ok(Segment {
                start,
                marker,
                body: &[],
                end: after_code,
            }));
        }
        let body_at = after_code + 2;
        let Some(&[hi, lo]) = data.get(after_code..body_at) else {
            return self.fail(MarkerError::Truncated {
                start,
                marker: Some(marker),
                partial: &[],
            });
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len < 2 {
            self.at = body_at;
            return Some(Err(MarkerError::BadLength { start, marker }));
        }
        let end = after_code + len;
        let Some(body) = data.get(body_at..end) else {
            return self.fail(MarkerError::Truncated {
                start,
                marker: Some(marker),
                partial: &data[body_at..],
            });
        };
        self.at = end;
        self.in_scan = marker == SOS;
        Some(Ok(Segment {
            start,
            marker,
            body,
            end,
        }))
    }
}

impl FusedIterator for Markers<'_> {}

/// Offset of the first `FF` from `at` on that is neither a stuffed `FF 00` nor a restart
/// marker, where entropy-coded data ends; the end of the bytes when there is none.
fn entropy_end(data: &[u8], mut at: usize) -> usize {
    loop {
        let Some(ff) = memchr::memchr(0xff, &data[at..]) else {
            return data.len();
        };
        at += ff;
        match data.get(at + 1) {
            Some(0x00 | RST0..=RST7) => at += 2,
            _ => return at,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Every item of the walk over `data`.
    fn walk(data: &[u8]) -> Vec<Result<Segment<'_>, MarkerError<'_>>> {
        Markers::new(data).collect()
    }

    fn segment(start: usize, marker: u8, body: &[u8], end: usize) -> Segment<'_> {
        Segment {
            start,
            marker,
            body,
            end,
        }
    }

    #[test]
    fn fill_bytes_belong_to_the_segment_they_precede() {
        // SOI, fill, APP0 with a 2-byte body, fill, EOI.
        let data = b"\xff\xd8\xff\xff\xff\xe0\x00\x04ab\xff\xff\xd9";
        assert_eq!(
            walk(data),
            [
                Ok(segment(0, SOI, b"", 2)),
                Ok(segment(2, 0xe0, b"ab", 10)),
                Ok(segment(10, EOI, b"", 13)),
            ]
        );
    }

    #[test]
    fn standalone_markers_have_no_length() {
        // RST3, TEM and a second SOI carry no length: what follows each is a marker.
        let data = b"\xff\xd8\xff\xd3\xff\x01\xff\xd8\xff\xfe\x00\x02\xff\xd9";
        let markers: Vec<_> = walk(data)
            .into_iter()
            .map(|item| item.map(|s| (s.marker, s.body.len(), s.end)))
            .collect();
        assert_eq!(
            markers,
            [
                Ok((SOI, 0, 2)),
                Ok((0xd3, 0, 4)),
                Ok((TEM, 0, 6)),
                Ok((SOI, 0, 8)),
                Ok((0xfe, 0, 12)),
                Ok((EOI, 0, 14)),
            ]
        );
    }

    #[test]
    fn entropy_coded_data_is_skipped_to_the_next_real_marker() {
        // SOS with a 1-byte body, then data with a stuffed FF 00 and an RST1, then EOI.
        let data = b"\xff\xd8\xff\xda\x00\x03\x01\x12\xff\x00\x34\xff\xd1\x56\xff\xd9";
        let mut markers = Markers::new(data);
        assert_eq!(markers.next(), Some(Ok(segment(0, SOI, b"", 2))));
        assert_eq!(markers.next(), Some(Ok(segment(2, SOS, b"\x01", 7))));
        assert_eq!(markers.skip_scan_data(), 14, "the scan ends at EOI");
        assert_eq!(
            markers.skip_scan_data(),
            14,
            "skipping twice skips nothing more"
        );
        assert_eq!(markers.next(), Some(Ok(segment(14, EOI, b"", 16))));
        assert_eq!(markers.next(), None);
        // Without the explicit skip, `next` skips too; a scan to the end of the bytes
        // ends the walk.
        let cut = &data[..13];
        let items = walk(cut);
        assert_eq!(items.len(), 2, "{items:?}");
    }

    #[test]
    fn the_walk_stops_where_the_bytes_end() {
        // Between segments: the walk simply ends.
        assert_eq!(walk(b"\xff\xd8"), [Ok(segment(0, SOI, b"", 2))]);
        // In the fill bytes.
        assert_eq!(
            walk(b"\xff\xd8\xff\xff")[1],
            Err(MarkerError::Truncated {
                start: 2,
                marker: None,
                partial: b""
            })
        );
        // In the length field.
        assert_eq!(
            walk(b"\xff\xd8\xff\xe1\x00")[1],
            Err(MarkerError::Truncated {
                start: 2,
                marker: Some(0xe1),
                partial: b""
            })
        );
        // A length past the end: what there is of the body comes with the error.
        let cut = walk(b"\xff\xd8\xff\xc0\x00\x11\x08\x00\xc8\x01");
        assert_eq!(
            cut,
            [
                Ok(segment(0, SOI, b"", 2)),
                Err(MarkerError::Truncated {
                    start: 2,
                    marker: Some(SOF0),
                    partial: b"\x08\x00\xc8\x01"
                }),
            ]
        );
        // A length one past the end, even with bytes after it in a longer buffer, is
        // not read past the slice.
        let long = b"\xff\xd8\xff\xe0\x00\x05abcd";
        assert_eq!(
            walk(&long[..8])[1],
            Err(MarkerError::Truncated {
                start: 2,
                marker: Some(0xe0),
                partial: b"ab"
            })
        );
        assert_eq!(walk(&long[..9])[1], Ok(segment(2, 0xe0, b"abc", 9)));
    }

    #[test]
    fn malformed_streams_end_the_walk_with_an_error() {
        assert_eq!(walk(b"GIF89a"), [Err(MarkerError::NoStartOfImage)]);
        assert_eq!(walk(b"\xff"), [Err(MarkerError::NoStartOfImage)]);
        assert_eq!(walk(b""), [Err(MarkerError::NoStartOfImage)]);
        assert_eq!(
            walk(b"\xff\xd8\x00\xff\xd9"),
            [
                Ok(segment(0, SOI, b"", 2)),
                Err(MarkerError::NotAMarker { at: 2 })
            ]
        );
    }

    #[test]
    fn a_length_under_two_is_reported_and_walked_past() {
        // APP0 with length 0, then the next marker right after the length field.
        let data = b"\xff\xd8\xff\xe0\x00\x00\xff\xe1\x00\x01\xff\xd9";
        assert_eq!(
            walk(data),
            [
                Ok(segment(0, SOI, b"", 2)),
                Err(MarkerError::BadLength {
                    start: 2,
                    marker: 0xe0
                }),
                Err(MarkerError::BadLength {
                    start: 6,
                    marker: 0xe1
                }),
                Ok(segment(10, EOI, b"", 12)),
            ]
        );
    }

    #[test]
    fn entropy_end_stops_at_fill_bytes_and_at_the_last_byte() {
        assert_eq!(entropy_end(b"\x12\xff\x00\x34", 0), 4);
        assert_eq!(entropy_end(b"\x12\xff\xd7\xff\xff\xd9", 0), 3);
        assert_eq!(entropy_end(b"\x12\xff", 0), 1);
        assert_eq!(entropy_end(b"\x12\xff", 2), 2);
    }

    /// Checks what the walk promises on any bytes: items in order, each starting past the
    /// previous one, bodies inside the buffer, and an end.
    fn check_walk(data: &[u8]) -> Result<(), TestCaseError> {
        let mut markers = Markers::new(data);
        let mut last_start = None;
        let mut items = 0usize;
        while let Some(item) = markers.next() {
            items += 1;
            prop_assert!(items <= data.len() + 1, "the walk must end");
            let start = match item {
                Ok(segment) => {
                    prop_assert!(segment.start < segment.end && segment.end <= data.len());
                    let body_at = segment.end - segment.body.len();
                    prop_assert_eq!(&data[body_at..segment.end], segment.body);
                    segment.start
                }
                Err(MarkerError::BadLength { start, .. }) => start,
                Err(MarkerError::Truncated { start, partial, .. }) => {
                    prop_assert!(data.ends_with(partial));
                    start
                }
                Err(MarkerError::NotAMarker { at }) => at,
                Err(MarkerError::NoStartOfImage) => 0,
            };
            prop_assert!(
                last_start.is_none_or(|last| start > last),
                "the walk advances"
            );
            last_start = Some(start);
            if markers.skip_scan_data() > data.len() {
                prop_assert!(false, "the walk stays inside the bytes");
            }
        }
        prop_assert_eq!(markers.next(), None, "an ended walk stays ended");
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_walk_never_panics_and_always_advances(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
        ) {
            check_walk(&bytes)?;
            // Past SOI, so that the walk has something to walk.
            check_walk(&[&b"\xff\xd8"[..], &bytes].concat())?;
        }

        /// Bytes made mostly of the interesting ones (`FF`, markers, small lengths).
        #[test]
        fn the_walk_survives_marker_soup(
            bytes in prop::collection::vec(
                prop::sample::select(vec![0x00, 0x01, 0x02, 0x03, 0xd0, 0xd8, 0xd9, 0xda, 0xe0, 0xff, 0xff, 0xff]),
                0..256,
            ),
        ) {
            check_walk(&[&b"\xff\xd8"[..], &bytes].concat())?;
        }
    }
}
