//! The HTTP API of issue 3 on the real binary: presets, dedup, job records and
//! long polls, progress events (SSE) and serving the outputs.

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use pixpool_testkit::*;
use serde_json::Value;

fn photo(name: &str) -> Vec<u8> {
    std::fs::read(test_photo(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `w`×`h` fitted inside `box_w` wide, never upscaled, aspect kept.
fn inside(w: u32, h: u32, box_w: u32) -> (u32, u32) {
    let ow = w.min(box_w);
    (ow, ((h as f64) * (ow as f64) / (w as f64)).round() as u32)
}

/// The built-in set for a source displayed at `w`×`h` (both at least 200).
fn builtin(w: u32, h: u32) -> Vec<(&'static str, (u32, u32))> {
    vec![
        ("thumb", (200, 200)),
        ("small", inside(w, h, 480)),
        ("medium", inside(w, h, 800)),
        ("large", inside(w, h, 1600)),
    ]
}

/// Checks a done job's outputs against (preset, size, extension, type), in order.
fn check_outputs(server: &Server, job: &Value, expect: &[(&str, (u32, u32), &str, &str)]) {
    let id = job["id"].as_str().expect("id");
    assert_eq!(job["state"], "done", "{job}");
    assert!(job["error"].is_null(), "{job}");
    let names: Vec<&str> = expect.iter().map(|e| e.0).collect();
    assert_eq!(job["presets"], serde_json::json!(names), "{job}");
    let outputs = job["outputs"].as_array().expect("outputs");
    let got: Vec<&str> = outputs
        .iter()
        .map(|o| o["preset"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        got, names,
        "outputs in the order of the job's presets: {job}"
    );
    for (out, (preset, (w, h), ext, ctype)) in outputs.iter().zip(expect) {
        let what = format!("job {id} preset {preset}");
        let path = server.variant_path(id, preset, ext);
        // The API shows no path: where a variant lies is the store's business.
        assert!(out.get("path").is_none(), "{what}: {out}");
        let rec = server.record(id).expect("record");
        let stored = rec["outputs"]
            .as_array()
            .and_then(|o| o.iter().find(|o| o["preset"] == *preset))
            .expect("stored output");
        assert_eq!(stored["path"], path, "{what}: {stored}");
        assert_eq!(
            out["url"],
            format!("/images/{id}/{preset}"),
            "{what}: {out}"
        );
        assert_eq!(out["content_type"], *ctype, "{what}: {out}");
        let file = server.stored(&path);
        assert_eq!(
            out["bytes"].as_u64(),
            Some(file.len() as u64),
            "{what}: {out}"
        );
        let etag = out["etag"].as_str().unwrap_or("");
        assert!(
            !etag.is_empty() && etag.chars().all(|c| c.is_ascii_hexdigit()),
            "{what}: etag {etag:?}"
        );
        if *ext == "jpg" {
            assert!(file.starts_with(&[0xFF, 0xD8, 0xFF]), "{what}: not a JPEG");
        }
        let (fw, fh) = image::load_from_memory(&file)
            .map(|img| (img.width(), img.height()))
            .unwrap_or_else(|e| panic!("{what}: does not decode: {e}"));
        assert_eq!(
            (out["width"].as_u64(), out["height"].as_u64()),
            (Some(fw as u64), Some(fh as u64)),
            "{what}: the record matches the file"
        );
        assert_eq!(fw, *w, "{what}: width");
        assert!(fh.abs_diff(*h) <= 1, "{what}: height {fh}, expected {h}");
    }
}

fn jpegs(
    expect: &[(&'static str, (u32, u32))],
) -> Vec<(&'static str, (u32, u32), &'static str, &'static str)> {
    expect
        .iter()
        .map(|(p, s)| (*p, *s, "jpg", "image/jpeg"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_without_presets_gets_every_builtin_preset_in_order() {
    let server = Server::start(1, 2, &[]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let leaf = conn
        .upload("leaf.jpg", &photo("04-fallenleaf.jpg"))
        .await
        .expect("upload");
    let leaf = accepted_id(&leaf, "fallen leaf");
    let storm = conn
        .upload("storm.jpg", &photo("01-storm-orient6.jpg"))
        .await
        .expect("upload");
    let storm = accepted_id(&storm, "storm");

    let job = wait_final(server.addr, &leaf, Duration::from_secs(30)).await;
    check_outputs(&server, &job, &jpegs(&builtin(2560, 1600)));
    // Orientation 6: displayed 1280×1920; `large` (1600) is not upscaled past 1280.
    let job = wait_final(server.addr, &storm, Duration::from_secs(30)).await;
    check_outputs(&server, &job, &jpegs(&builtin(1280, 1920)));
    assert_eq!(job["outputs"][3]["width"], 1280, "never upscaled: {job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_are_chosen_by_form_field_or_query_and_unknown_ones_are_refused() {
    let server = Server::start(1, 1, &[]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let grey = photo("06-grey-grayscale.jpg");

    let form = conn
        .upload_to(
            "/upload",
            &[
                ("image", Some("a.jpg"), &tagged_jpeg(&grey, "form")),
                ("presets", None, b"thumb,medium"),
            ],
        )
        .await
        .expect("send");
    let form = accepted_id(&form, "presets in the form");
    let query = conn
        .upload_to(
            "/upload?presets=small",
            &[("image", Some("b.jpg"), &tagged_jpeg(&grey, "query"))],
        )
        .await
        .expect("send");
    let query = accepted_id(&query, "presets in the query");
    let two = conn
        .upload_to(
            "/upload?presets=large,thumb",
            &[("image", Some("c.jpg"), &tagged_jpeg(&grey, "query2"))],
        )
        .await
        .expect("send");
    let two = accepted_id(&two, "two presets in the query");

    // Unknown presets: refused, in either place, alone or beside known ones.
    let refused = [
        conn.upload_to(
            "/upload?presets=huge",
            &[("image", Some("d.jpg"), &tagged_jpeg(&grey, "d"))],
        )
        .await
        .expect("send"),
        conn.upload_to(
            "/upload",
            &[
                ("image", Some("e.jpg"), &tagged_jpeg(&grey, "e")),
                ("presets", None, b"thumb,bogus"),
            ],
        )
        .await
        .expect("send"),
    ];
    for resp in &refused {
        assert_problem(resp, StatusCode::BAD_REQUEST, "unknown preset");
    }

    let job = wait_final(server.addr, &form, Duration::from_secs(30)).await;
    check_outputs(
        &server,
        &job,
        &jpegs(&[("thumb", (200, 200)), ("medium", (800, 500))]),
    );
    let job = wait_final(server.addr, &query, Duration::from_secs(30)).await;
    check_outputs(&server, &job, &jpegs(&[("small", (480, 300))]));
    // The order of a request's list is the job's order.
    let job = wait_final(server.addr, &two, Duration::from_secs(30)).await;
    let presets: Vec<String> = job["presets"]
        .as_array()
        .expect("presets")
        .iter()
        .map(|p| p.as_str().expect("name").to_string())
        .collect();
    let mut sorted = presets.clone();
    sorted.sort();
    assert_eq!(sorted, ["large", "thumb"], "{job}");
    let outputs: Vec<&str> = job["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o["preset"].as_str().expect("preset"))
        .collect();
    assert_eq!(outputs, presets, "outputs follow the job's presets: {job}");

    // The refused uploads left nothing: three records, three originals, no spool file.
    assert_eq!(server.job_ids().len(), 3);
    assert_eq!(server.originals().len(), 3);
    let spool = files_below(&server.uploads.join("tmp"));
    assert!(spool.is_empty(), "spool files left: {spool:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preset_flags_replace_the_builtin_set() {
    let server = Server::start(
        1,
        1,
        &[
            "--preset",
            "tiny:64x64:cover",
            "--preset",
            "wide:300",
            "--preset",
            "pic:120:png",
        ],
    );
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let webp = photo("19-aitzgorri.webp"); // 3088×2056
    let resp = conn.upload("mountain.webp", &webp).await.expect("send");
    let id = accepted_id(&resp, "default set");
    // The built-in presets are gone.
    for gone in ["medium", "thumb"] {
        let resp = conn
            .upload_to(
                &format!("/upload?presets={gone}"),
                &[("image", Some("x.webp"), &webp)],
            )
            .await
            .expect("send");
        assert_problem(&resp, StatusCode::BAD_REQUEST, gone);
    }
    let only = conn
        .upload_to("/upload?presets=wide", &[("image", Some("y.webp"), &webp)])
        .await
        .expect("send");
    let only = accepted_id(&only, "one configured preset");
    assert_ne!(only, id, "another preset selection is another job");

    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    check_outputs(
        &server,
        &job,
        &[
            ("tiny", (64, 64), "jpg", "image/jpeg"),
            ("wide", (300, 200), "jpg", "image/jpeg"),
            ("pic", (120, 80), "png", "image/png"),
        ],
    );
    let job = wait_final(server.addr, &only, Duration::from_secs(30)).await;
    check_outputs(&server, &job, &[("wide", (300, 200), "jpg", "image/jpeg")]);

    // A PNG output is served as a PNG.
    let png = conn
        .get(&format!("/images/{id}/pic"))
        .await
        .expect("get png");
    assert_eq!(png.status, StatusCode::OK);
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert!(png.body.starts_with(b"\x89PNG\r\n\x1a\n"));
}

/// The placeholder of a done job is the image as displayed (EXIF orientation applied),
/// whole (not the thumbnail's crop): its aspect ratio, its ThumbHash's shape and mean
/// colour, its BlurHash and its dominant colour all agree with the served variant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_job_has_a_placeholder_of_the_image_as_displayed() {
    use base64::Engine as _;
    let server = Server::start(1, 1, &[]);
    let bytes = tagged_jpeg(&photo("01-storm-orient6.jpg"), "placeholder");
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let queued = conn
        .upload_to(
            "/upload?presets=thumb,small",
            &[("image", Some("s.jpg"), &bytes)],
        )
        .await
        .expect("upload");
    let id = accepted_id(&queued, "storm");
    let early = server.record(&id).expect("record");
    assert!(
        early["state"] == "done" || early["placeholder"].is_null(),
        "none before done: {early}"
    );
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");
    let p = &job["placeholder"];
    // Stored 1920×1280, displayed 1280×1920 (Orientation 6).
    let aspect = p["aspect_ratio"].as_f64().expect("aspect_ratio");
    assert!((aspect - 1280.0 / 1920.0).abs() < 1e-9, "{p}");

    let hash = base64::engine::general_purpose::STANDARD
        .decode(p["thumbhash"].as_str().expect("thumbhash"))
        .expect("standard base64");
    let shape = thumbhash::thumb_hash_to_approximate_aspect_ratio(&hash).expect("a ThumbHash");
    // Kept as a ratio of its component counts: roughly.
    assert!(
        (f64::from(shape) - aspect).abs() < 0.15 * aspect,
        "portrait: {shape}"
    );

    // The `small` variant (480 px wide, whole image, as displayed) is the reference.
    let small = conn
        .get(&format!("/images/{id}/small"))
        .await
        .expect("small");
    let small = image::load_from_memory(&small.body)
        .expect("decodes")
        .to_rgb8();
    let n = f64::from(small.width() * small.height());
    let mean: Vec<f64> = (0..3)
        .map(|c| small.pixels().map(|px| f64::from(px[c])).sum::<f64>() / n)
        .collect();
    let (r, g, b, _) = thumbhash::thumb_hash_to_average_rgba(&hash).expect("average");
    for (got, want) in [r, g, b].iter().zip(&mean) {
        assert!(
            (f64::from(*got) * 255.0 - want).abs() < 12.0,
            "ThumbHash mean {:?} against the image's {mean:?}",
            (r, g, b)
        );
    }
    let blur = p["blurhash"].as_str().expect("blurhash");
    // Portrait: 3×4 components.
    assert_eq!(blur.len(), 6 + 2 * (3 * 4 - 1), "{blur}");
    let decoded = blurhash::decode(blur, 3, 4, 1.0).expect("a BlurHash");
    let blur_mean: f64 = decoded
        .chunks_exact(4)
        .map(|px| f64::from(px[0]))
        .sum::<f64>()
        / 12.0;
    assert!(
        (blur_mean - mean[0]).abs() < 25.0,
        "BlurHash red {blur_mean} against {mean:?}"
    );

    let dominant = p["dominant_color"].as_str().expect("dominant_color");
    assert!(
        dominant.len() == 7
            && dominant.starts_with('#')
            && dominant[1..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{dominant}"
    );
    // Some 8 % of the displayed image lies within 24 levels of it, on each channel.
    let want: Vec<i32> = (0..3)
        .map(|i| i32::from_str_radix(&dominant[1 + 2 * i..3 + 2 * i], 16).expect("hex"))
        .collect();
    let near = small
        .pixels()
        .filter(|px| (0..3).all(|c| (i32::from(px[c]) - want[c]).abs() <= 24))
        .count();
    assert!(
        near as f64 > 0.08 * n,
        "{dominant}: {near} of {n} pixels near it"
    );
    assert_eq!(server.record(&id).expect("record")["placeholder"], *p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_job_records_source_hash_and_ordered_timings() {
    let server = Server::start(1, 1, &[]);
    let bytes = tagged_jpeg(&photo("01-storm-orient6.jpg"), "timings");
    let resp = upload(server.addr, "storm.jpg", &bytes).await;
    let id = accepted_id(&resp, "storm");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["status_url"], format!("/jobs/{id}"));
    // The stored record is not the response: no paths, dedup key or worker slot.
    for internal in ["dedup_key", "worker"] {
        assert!(job.get(internal).is_none(), "{internal} in {job}");
    }
    assert!(job["source"].get("path").is_none(), "{job}");
    let rec = server.record(&id).expect("record");
    assert_eq!(
        rec["source"]["path"],
        server.original_path(&id, "jpg"),
        "{rec}"
    );
    assert_eq!(job["source"]["format"], "jpeg", "{job}");
    assert_eq!(job["source"]["bytes"].as_u64(), Some(bytes.len() as u64));
    let hash = job["content_hash"].as_str().unwrap_or("");
    assert!(
        hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "BLAKE3 of the upload, hex: {job}"
    );
    assert!(job["attempts"].as_u64() >= Some(1), "{job}");
    assert_eq!(rec["worker"], 0, "{rec}");
    let ts = |k: &str| -> String {
        let t = job[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} is a string: {job}"))
            .to_string();
        assert!(
            t.len() >= 20 && t.as_bytes()[10] == b'T' && t.ends_with('Z'),
            "{k} is RFC 3339 UTC: {t}"
        );
        t
    };
    let (queued, started, finished) = (ts("queued_at"), ts("started_at"), ts("finished_at"));
    assert!(
        queued <= started && started <= finished,
        "queued {queued} <= started {started} <= finished {finished}"
    );
    for stage in ["decode", "resize", "encode"] {
        let ms = job["stage_ms"][stage].as_f64();
        assert!(ms.is_some_and(|m| m >= 0.0), "stage_ms.{stage}: {job}");
    }
    // The job served is the record on disk, less what is the store's own.
    let disk = server.record(&id).expect("record on disk");
    for key in [
        "state",
        "attempts",
        "queued_at",
        "finished_at",
        "content_hash",
    ] {
        assert_eq!(disk[key], job[key], "{key}");
    }
    for (served, stored) in job["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .zip(disk["outputs"].as_array().expect("stored outputs"))
    {
        let mut stored = stored.clone();
        stored.as_object_mut().expect("object").remove("path");
        assert_eq!(*served, stored);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_upload_returns_the_finished_job_without_processing_it_again() {
    let server = Server::start(2, 2, &[]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let bytes = tagged_jpeg(&photo("06-grey-grayscale.jpg"), "dedup-done");
    let first = conn.upload("grey.jpg", &bytes).await.expect("send");
    let id = accepted_id(&first, "first upload");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");

    // Same bytes, same (default) presets, on whichever front: the same job, done.
    for name in ["again.jpg", "other-name.png"] {
        let again = Conn::open(server.addr)
            .await
            .expect("connect")
            .upload(name, &bytes)
            .await
            .expect("send");
        assert_eq!(
            again.status,
            StatusCode::OK,
            "a deduplicated finished job is 200: {:?}",
            again.body
        );
        let body = again.json();
        assert_eq!(body["id"], id.as_str(), "{body}");
        assert_eq!(body["deduplicated"], true, "{body}");
        assert_eq!(body["state"], "done", "{body}");
        assert_eq!(body["status_url"], format!("/jobs/{id}"), "{body}");
    }
    // Another preset selection of the same bytes is another job; repeated, it dedups too.
    let thumb = conn
        .upload_to("/upload?presets=thumb", &[("image", Some("g.jpg"), &bytes)])
        .await
        .expect("send");
    let thumb_id = accepted_id(&thumb, "same bytes, other presets");
    assert_ne!(thumb_id, id);
    let thumb_again = conn
        .upload_to("/upload?presets=thumb", &[("image", Some("g.jpg"), &bytes)])
        .await
        .expect("send");
    assert!(
        thumb_again.status == StatusCode::ACCEPTED || thumb_again.status == StatusCode::OK,
        "{thumb_again:?}"
    );
    assert_eq!(thumb_again.json()["id"], thumb_id.as_str());
    assert_eq!(thumb_again.json()["deduplicated"], true);
    let thumb_job = wait_final(server.addr, &thumb_id, Duration::from_secs(30)).await;
    assert_eq!(thumb_job["presets"], serde_json::json!(["thumb"]));

    // Processed once each: one attempt, one `processing` line, one record, one original.
    let job = wait_final(server.addr, &id, Duration::from_secs(5)).await;
    assert_eq!(job["attempts"], 1, "{job}");
    for j in [&id, &thumb_id] {
        let lines = server.processing_lines(j);
        assert_eq!(lines.len(), 1, "job {j} processed once: {lines:#?}");
    }
    assert_eq!(server.job_ids().len(), 2);
    assert_eq!(server.originals().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_upload_of_an_unfinished_job_is_202_with_the_same_id() {
    let server = Server::start(1, 1, &[]);
    let bytes = tagged_jpeg(&photo("04-fallenleaf.jpg"), "dedup-queued");
    let (id, worker) = stalled_job(&server, "leaf.jpg", &bytes, "").await;
    let again = upload(server.addr, "leaf-again.jpg", &bytes).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{:?}", again.body);
    let body = again.json();
    assert_eq!(body["id"], id.as_str(), "{body}");
    assert_eq!(body["deduplicated"], true, "{body}");
    assert_eq!(body["status_url"], format!("/jobs/{id}"), "{body}");
    resume_process(worker);
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(server.processing_lines(&id).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_uploads_sent_at_once_to_two_fronts_are_one_job_processed_once() {
    let server = Server::start(2, 2, &[]);
    let leaf = photo("04-fallenleaf.jpg");
    const ROUNDS: usize = 4;
    let mut ids = Vec::new();
    for round in 0..ROUNDS {
        let bytes = tagged_jpeg(&leaf, &format!("race-{round}"));
        let mut conns = conn_per_front(server.addr, 2).await;
        let (mut b, mut a) = (conns.pop().expect("front 1"), conns.pop().expect("front 0"));
        let (ra, rb) = tokio::join!(a.upload("a.jpg", &bytes), b.upload("b.jpg", &bytes));
        let (ra, rb) = (
            ra.expect("upload on front 0"),
            rb.expect("upload on front 1"),
        );
        ids.push(one_job_of_a_race(&ra, &rb, &format!("round {round}")));
    }
    for id in &ids {
        let job = wait_final(server.addr, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "done", "{job}");
        assert_eq!(job["attempts"], 1, "processed once: {job}");
    }
    for id in &ids {
        let lines = server.processing_lines(id);
        assert_eq!(lines.len(), 1, "job {id} processed once: {lines:#?}");
    }
    // The losing upload of each pair left no job, no original, no spool file.
    assert_eq!(server.job_ids().len(), ROUNDS);
    assert_eq!(server.originals().len(), ROUNDS);
    let spool = files_below(&server.uploads.join("tmp"));
    assert!(spool.is_empty(), "spool files left: {spool:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_long_polls_until_the_job_is_final_or_the_time_is_up() {
    let server = Server::start(1, 1, &[]);
    let bytes = tagged_jpeg(&photo("06-grey-grayscale.jpg"), "long-poll");
    let (id, worker) = stalled_job(&server, "grey.jpg", &bytes, "").await;
    let mut conn = Conn::open(server.addr).await.expect("connect");

    // Not final: the answer comes after about N seconds, with the current state.
    let asked = Instant::now();
    let resp = conn.get(&format!("/jobs/{id}?wait=1")).await.expect("get");
    let took = asked.elapsed();
    assert_eq!(resp.status, StatusCode::OK, "{:?}", resp.body);
    let state = resp.json()["state"].as_str().unwrap_or("").to_string();
    assert!(state == "queued" || state == "processing", "{state}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "?wait=1 answered after {took:?}"
    );

    // Final while waiting: the answer comes as soon as it is done, not after 30 s.
    let addr = server.addr;
    let path = format!("/jobs/{id}?wait=30");
    let poll = tokio::spawn(async move {
        let mut conn = Conn::open(addr).await.expect("connect");
        let asked = Instant::now();
        let resp = conn.get(&path).await.expect("long poll");
        (resp, asked.elapsed())
    });
    // Let the long poll reach the server before the job can finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    resume_process(worker);
    let (resp, took) = tokio::time::timeout(Duration::from_secs(28), poll)
        .await
        .expect("the long poll answered when the job finished")
        .expect("poll task");
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["state"], "done", "{:?}", resp.json());
    assert!(took < Duration::from_secs(25), "{took:?}");

    // Already final: at once.
    let asked = Instant::now();
    let resp = conn.get(&format!("/jobs/{id}?wait=10")).await.expect("get");
    assert_eq!(resp.json()["state"], "done");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
}

/// Checks a whole event sequence of a done job against its record.
/// `resizing` is required of a live sequence (the subscriber was there when
/// it happened); a replay from the record may leave it out.
fn check_done_sequence(events: &[SseEvent], job: &Value, live: bool) {
    assert_eq!(events.first().map(|e| e.id), Some(Some(0)), "{events:#?}");
    for pair in events.windows(2) {
        assert!(
            pair[0].id.is_some() && pair[1].id > pair[0].id,
            "ids increase strictly: {pair:#?}"
        );
    }
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let outputs = job["outputs"].as_array().expect("outputs");
    let mut expect = vec!["queued", "processing", "resizing"];
    expect.extend(std::iter::repeat_n("output", outputs.len()));
    expect.push("done");
    if !live && names.get(2) != Some(&"resizing") {
        expect.remove(2);
    }
    assert_eq!(names, expect, "{events:#?}");
    let processing = events[1].json();
    assert!(processing["attempt"].as_u64() >= Some(1), "{processing}");
    assert_eq!(processing["stage"], "decode", "{processing}");
    // One output event per preset (in any order), each as in the record.
    let first_output = expect.len() - 1 - outputs.len();
    let mut seen: Vec<String> = Vec::new();
    for ev in &events[first_output..events.len() - 1] {
        let data = ev.json();
        let preset = data["preset"].as_str().unwrap_or("?").to_string();
        let out = outputs
            .iter()
            .find(|o| o["preset"] == preset.as_str())
            .unwrap_or_else(|| panic!("output event for an unknown preset: {data}"));
        for key in ["width", "height", "url"] {
            assert_eq!(data[key], out[key], "output event {key}: {data} vs {out}");
        }
        assert!(!seen.contains(&preset), "two output events for {preset}");
        seen.push(preset);
    }
    let done = events.last().expect("done").json();
    assert_eq!(done["id"], job["id"], "{done}");
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["outputs"], job["outputs"], "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_finished_job_are_replayed_and_last_event_id_resumes() {
    let server = Server::start(1, 1, &[]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let bytes = tagged_jpeg(&photo("04-fallenleaf.jpg"), "events");
    let resp = conn
        .upload_to(
            "/upload?presets=thumb,medium",
            &[("image", Some("leaf.jpg"), &bytes)],
        )
        .await
        .expect("send");
    let id = accepted_id(&resp, "leaf");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;

    let mut stream = conn
        .events(&format!("/jobs/{id}/events"), None)
        .await
        .expect("events");
    assert_eq!(stream.status, StatusCode::OK);
    let ctype = stream
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    // The stream ends by itself after `done`.
    let events = stream.all(Duration::from_secs(10)).await;
    check_done_sequence(&events, &job, false);

    // Resuming after `processing` sends only what came after it.
    let after = events[1].id.expect("id");
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let mut stream = conn
        .events(&format!("/jobs/{id}/events"), Some(after))
        .await
        .expect("events");
    assert_eq!(stream.status, StatusCode::OK);
    let rest = stream.all(Duration::from_secs(10)).await;
    let got: Vec<(Option<u64>, &str)> = rest.iter().map(|e| (e.id, e.event.as_str())).collect();
    let want: Vec<(Option<u64>, &str)> = events[2..]
        .iter()
        .map(|e| (e.id, e.event.as_str()))
        .collect();
    assert_eq!(got, want);

    // Resuming after the last event: nothing more, and the stream still ends.
    let last = events.last().and_then(|e| e.id).expect("id");
    let mut stream = Conn::open(server.addr)
        .await
        .expect("connect")
        .events(&format!("/jobs/{id}/events"), Some(last))
        .await
        .expect("events");
    let none = stream.all(Duration::from_secs(10)).await;
    assert!(none.is_empty(), "{none:#?}");

    // Unknown jobs have no stream.
    let resp = conn
        .get("/jobs/01a2083c-89a7-713c-8a3d-873a30d29dd5/events")
        .await
        .expect("get");
    assert_problem(&resp, StatusCode::NOT_FOUND, "events of an unknown job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_failed_job_end_with_failed_and_its_problem() {
    let server = Server::start(1, 1, &[]);
    let grey = photo("06-grey-grayscale.jpg");
    let truncated = &grey[..grey.len() * 2 / 5];
    let resp = upload(server.addr, "cut.jpg", truncated).await;
    let id = accepted_id(&resp, "truncated");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "failed", "{job}");
    let mut stream = Conn::open(server.addr)
        .await
        .expect("connect")
        .events(&format!("/jobs/{id}/events"), None)
        .await
        .expect("events");
    assert_eq!(stream.status, StatusCode::OK);
    let events = stream.all(Duration::from_secs(10)).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"queued"), "{events:#?}");
    assert_eq!(names.last(), Some(&"failed"), "{events:#?}");
    assert!(
        !names.contains(&"output") && !names.contains(&"done"),
        "{events:#?}"
    );
    let failed = events.last().expect("failed").json();
    assert_eq!(failed["id"], id.as_str(), "{failed}");
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["error"]["status"], 422, "{failed}");
    for pair in events.windows(2) {
        assert!(pair[1].id > pair[0].id, "ids increase strictly: {pair:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_live_to_subscribers_on_every_front() {
    let server = Server::start(2, 1, &[]);
    let bytes = tagged_jpeg(&photo("04-fallenleaf.jpg"), "live");
    let (id, worker) = stalled_job(&server, "leaf.jpg", &bytes, "?presets=thumb,small").await;
    let path = format!("/jobs/{id}/events");

    // Two subscribers on each front, each on its own connection.
    let mut streams = Vec::new();
    for _ in 0..2 {
        for (slot, mut conn) in conn_per_front(server.addr, 2).await.into_iter().enumerate() {
            let stream = conn.events(&path, None).await.expect("events");
            assert_eq!(stream.status, StatusCode::OK, "front {slot}");
            streams.push((slot, conn, stream, Vec::new()));
        }
    }
    // While the worker is stopped the job cannot be done: `queued` comes at once,
    // and no subscriber sees an output or the end.
    for (slot, _, stream, seen) in &mut streams {
        let first = stream
            .next(Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("front {slot}: {e}"))
            .unwrap_or_else(|| panic!("front {slot}: stream ended before the job did"));
        assert_eq!((first.id, first.event.as_str()), (Some(0), "queued"));
        seen.push(first);
        while let Ok(next) = stream.next(Duration::from_millis(200)).await {
            let ev = next.unwrap_or_else(|| panic!("front {slot}: ended while stalled"));
            assert!(
                ev.event == "processing" || ev.event == "resizing",
                "front {slot}: {ev:?} while the worker is stopped"
            );
            seen.push(ev);
        }
    }
    // The worker is stopped: the record is frozen. A job still queued now has
    // its `resizing` ahead of it, which every subscriber must then see live.
    let was_queued = server.record(&id).expect("record")["state"] == "queued";
    resume_process(worker);
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    let mut sequences = Vec::new();
    for (slot, _conn, mut stream, mut seen) in streams {
        seen.extend(stream.all(Duration::from_secs(20)).await);
        check_done_sequence(&seen, &job, was_queued);
        let seq: Vec<(Option<u64>, String)> =
            seen.iter().map(|e| (e.id, e.event.clone())).collect();
        sequences.push((slot, seq));
    }
    for (slot, seq) in &sequences[1..] {
        assert_eq!(seq, &sequences[0].1, "front {slot} sent the same events");
    }
    // A late client is replayed the same ids for the same events (the live
    // `resizing` step is not part of a replay).
    let mut late = Conn::open(server.addr).await.expect("connect");
    let mut replay = late
        .events(&format!("/jobs/{id}/events"), None)
        .await
        .expect("replay");
    let replayed: Vec<(Option<u64>, String)> = replay
        .all(Duration::from_secs(20))
        .await
        .iter()
        .map(|e| (e.id, e.event.clone()))
        .collect();
    let live: Vec<(Option<u64>, String)> = sequences[0]
        .1
        .iter()
        .filter(|(_, name)| name != "resizing")
        .cloned()
        .collect();
    assert_eq!(replayed, live, "replayed ids match the live ones");
}

/// A preset of several formats: every one is written from one decode, listed in the
/// record and announced by an `output` event each; `GET /images` picks one by `Accept`
/// (explicit names only, highest q, the fallback otherwise) or `?format=`, always with
/// `Vary: Accept` and the chosen file's own ETag, which alone `If-None-Match` matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_of_several_formats_is_negotiated_by_accept() {
    let server = Server::start(1, 1, &["--preset", "pic:480:avif+webp+jpeg:q75"]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let bytes = tagged_jpeg(&photo("04-fallenleaf.jpg"), "negotiated");
    let resp = conn
        .upload_to("/upload", &[("image", Some("leaf.jpg"), &bytes)])
        .await
        .expect("upload");
    let id = accepted_id(&resp, "leaf");
    let job = wait_final(server.addr, &id, Duration::from_secs(60)).await;
    assert_eq!(job["state"], "done", "{job}");
    let outputs = job["outputs"].as_array().expect("outputs");
    let listed: Vec<(&str, &str)> = outputs
        .iter()
        .map(|o| {
            (
                o["content_type"].as_str().unwrap_or(""),
                o["url"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let base = format!("/images/{id}/pic");
    assert_eq!(
        listed,
        [
            ("image/avif", format!("{base}?format=avif").as_str()),
            ("image/webp", format!("{base}?format=webp").as_str()),
            ("image/jpeg", base.as_str()),
        ],
        "every format, the fallback last: {job}"
    );
    for o in outputs {
        assert_eq!(
            (o["width"].as_u64(), o["height"].as_u64()),
            (Some(480), Some(300)),
            "{o}"
        );
    }
    let etag = |i: usize| format!("\"{}\"", outputs[i]["etag"].as_str().expect("etag"));
    let (avif, webp, jpeg) = (etag(0), etag(1), etag(2));
    assert!(avif != webp && webp != jpeg, "an ETag per file");
    let events = conn
        .events(&format!("/jobs/{id}/events"), None)
        .await
        .expect("events")
        .all(Duration::from_secs(10))
        .await;
    assert_eq!(
        events.iter().filter(|e| e.event == "output").count(),
        3,
        "an output event per format"
    );

    let chrome = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
    let safari = "image/webp,image/png,image/svg+xml,image/*;q=0.8";
    for (query, accept, want_type, want_etag) in [
        ("", None, "image/jpeg", &jpeg),
        ("", Some("*/*"), "image/jpeg", &jpeg),
        ("", Some("image/*"), "image/jpeg", &jpeg),
        ("", Some("image/jpeg"), "image/jpeg", &jpeg),
        ("", Some("text/html"), "image/jpeg", &jpeg),
        ("", Some(chrome), "image/avif", &avif),
        ("", Some(safari), "image/webp", &webp),
        (
            "",
            Some("image/webp;q=0.5, image/avif;q=0.9"),
            "image/avif",
            &avif,
        ),
        (
            "",
            Some("image/webp;q=0.9, image/avif;q=0.5"),
            "image/webp",
            &webp,
        ),
        (
            "",
            Some("image/avif;q=0, image/webp;q=0"),
            "image/jpeg",
            &jpeg,
        ),
        ("?format=webp", Some(chrome), "image/webp", &webp),
        ("?format=jpeg", Some(chrome), "image/jpeg", &jpeg),
        ("?format=avif", None, "image/avif", &avif),
    ] {
        let what = format!("{query} Accept: {accept:?}");
        let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("accept", *a)).collect();
        let got = conn
            .request(Method::GET, &format!("{base}{query}"), &headers)
            .await
            .expect("get");
        assert_eq!(
            got.status,
            StatusCode::OK,
            "{what}: {:?}",
            got.body_snippet()
        );
        assert_eq!(got.header("content-type"), Some(want_type), "{what}");
        assert_eq!(got.header("etag"), Some(want_etag.as_str()), "{what}");
        assert_eq!(got.header("vary"), Some("Accept"), "{what}");
        let index = [&avif, &webp, &jpeg]
            .iter()
            .position(|e| *e == want_etag)
            .expect("one of them");
        assert_eq!(
            outputs[index]["bytes"].as_u64(),
            Some(got.body.len() as u64),
            "{what}"
        );
        // HEAD says the same without a body.
        let head = conn
            .request(Method::HEAD, &format!("{base}{query}"), &headers)
            .await
            .expect("head");
        assert_eq!(head.header("etag"), Some(want_etag.as_str()), "{what}");
        assert!(head.body.is_empty());
    }
    // The files are what they say: AVIF's brand, WebP's RIFF, and WebP and JPEG decode
    // to the same picture (AVIF is decoded by a browser in the dashboard test).
    let get_as = |format: &'static str| format!("{base}?format={format}");
    let avif_file = conn.get(&get_as("avif")).await.expect("avif").body;
    assert_eq!(&avif_file[4..12], b"ftypavif");
    let webp_file = conn.get(&get_as("webp")).await.expect("webp").body;
    let jpeg_file = conn.get(&base).await.expect("jpeg").body;
    let webp_px = image::load_from_memory(&webp_file)
        .expect("webp decodes")
        .to_rgb8();
    let jpeg_px = image::load_from_memory(&jpeg_file)
        .expect("jpeg decodes")
        .to_rgb8();
    assert_eq!(webp_px.dimensions(), jpeg_px.dimensions());
    let diff: u64 = webp_px
        .as_raw()
        .iter()
        .zip(jpeg_px.as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = diff as f64 / webp_px.as_raw().len() as f64;
    assert!(
        mean < 6.0,
        "WebP and JPEG differ by {mean:.2} levels on average"
    );
    assert!(
        webp_file.len() < jpeg_file.len(),
        "lossy WebP ({} bytes) smaller than the JPEG ({})",
        webp_file.len(),
        jpeg_file.len()
    );

    // A format the preset does not write: 404, whatever Accept says.
    let png = conn.get(&get_as("png")).await.expect("png");
    assert_problem(&png, StatusCode::NOT_FOUND, "?format=png");
    let bogus = conn.get(&get_as("gif")).await.expect("gif");
    assert_problem(&bogus, StatusCode::NOT_FOUND, "?format=gif");

    // If-None-Match matches the variant the request would get, not another one.
    for (accept, tag, status) in [
        (chrome, &avif, StatusCode::NOT_MODIFIED),
        (chrome, &jpeg, StatusCode::OK),
        ("*/*", &jpeg, StatusCode::NOT_MODIFIED),
        ("*/*", &avif, StatusCode::OK),
    ] {
        let got = conn
            .request(
                Method::GET,
                &base,
                &[("accept", accept), ("if-none-match", tag.as_str())],
            )
            .await
            .expect("conditional get");
        assert_eq!(got.status, status, "Accept {accept} If-None-Match {tag}");
        assert_eq!(got.header("vary"), Some("Accept"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_served_with_etag_caching_headers_head_and_304() {
    let server = Server::start(1, 1, &[]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let bytes = tagged_jpeg(&photo("04-fallenleaf.jpg"), "serve");
    let resp = conn
        .upload_to(
            "/upload?presets=thumb,medium",
            &[("image", Some("leaf.jpg"), &bytes)],
        )
        .await
        .expect("send");
    let id = accepted_id(&resp, "leaf");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");

    let mut etags = Vec::new();
    let rec = server.record(&id).expect("record");
    for (out, stored) in job["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .zip(rec["outputs"].as_array().expect("stored outputs"))
    {
        let url = out["url"].as_str().expect("url");
        let file = server.stored(stored["path"].as_str().expect("path"));
        let etag = format!("\"{}\"", out["etag"].as_str().expect("etag"));
        let check_headers = |r: &Resp, what: &str| {
            assert_eq!(r.header("content-type"), Some("image/jpeg"), "{what}");
            assert_eq!(
                r.header("vary"),
                None,
                "{what}: one format, nothing to vary"
            );
            assert_eq!(r.header("etag"), Some(etag.as_str()), "{what}");
            assert_eq!(
                r.header("cache-control"),
                Some("public, max-age=31536000, immutable"),
                "{what}"
            );
            assert_eq!(
                r.header("x-content-type-options"),
                Some("nosniff"),
                "{what}"
            );
        };

        let get = conn.get(url).await.expect("get");
        assert_eq!(get.status, StatusCode::OK, "{url}: {:?}", get.body);
        check_headers(&get, "GET");
        assert_eq!(
            get.header("content-length"),
            Some(file.len().to_string().as_str())
        );
        assert!(get.body[..] == file[..], "{url}: body is the file");
        assert_eq!(out["bytes"].as_u64(), Some(file.len() as u64));

        let head = conn.request(Method::HEAD, url, &[]).await.expect("head");
        assert_eq!(head.status, StatusCode::OK, "HEAD {url}");
        check_headers(&head, "HEAD");
        assert_eq!(
            head.header("content-length"),
            Some(file.len().to_string().as_str())
        );
        assert!(head.body.is_empty(), "HEAD has no body");

        let cached = conn
            .request(Method::GET, url, &[("if-none-match", &etag)])
            .await
            .expect("conditional get");
        assert_eq!(cached.status, StatusCode::NOT_MODIFIED, "{url}");
        assert_eq!(cached.header("etag"), Some(etag.as_str()));
        assert!(cached.body.is_empty(), "304 has no body");

        let stale = conn
            .request(Method::GET, url, &[("if-none-match", "\"0123abcd\"")])
            .await
            .expect("conditional get");
        assert_eq!(stale.status, StatusCode::OK, "another etag: the file");
        assert!(stale.body[..] == file[..]);
        etags.push(etag);
    }
    assert_ne!(etags[0], etags[1], "each output has its own etag");

    // Not produced, unknown, malformed: 404 problems; the connection still serves.
    for path in [
        format!("/images/{id}/large"),
        format!("/images/{id}/nonesuch"),
        "/images/01a2083c-89a7-713c-8a3d-873a30d29dd5/thumb".to_string(),
        "/images/not-a-job/thumb".to_string(),
        format!("/images/{id}/..%2F..%2Fjobs%2F{id}.json"),
    ] {
        let resp = conn.get(&path).await.expect("get");
        assert_problem(&resp, StatusCode::NOT_FOUND, &path);
    }
    assert_eq!(
        conn.get("/health").await.expect("health").status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_an_unfinished_job_are_409_with_retry_after() {
    let server = Server::start(1, 1, &[]);
    let bytes = tagged_jpeg(&photo("06-grey-grayscale.jpg"), "409");
    let (id, worker) = stalled_job(&server, "grey.jpg", &bytes, "?presets=thumb").await;
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let resp = conn.get(&format!("/images/{id}/thumb")).await.expect("get");
    assert_problem(&resp, StatusCode::CONFLICT, "image of an unfinished job");
    let retry = resp.header("retry-after").unwrap_or("");
    assert!(
        retry.parse::<u64>().is_ok(),
        "Retry-After in seconds: {retry:?}"
    );
    resume_process(worker);
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");
    let resp = conn.get(&format!("/images/{id}/thumb")).await.expect("get");
    assert_eq!(resp.status, StatusCode::OK);
}

/// An `output` event tells a client a variant exists before the job is done (the
/// dashboard loads the thumbnail on it): the variant must be served from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_variant_written_while_its_job_runs_is_served_uncached() {
    let server = Server::start(1, 1, &[]);
    if server.services.is_some() {
        // It plants a record and a file behind the server's back; in the distributed
        // mode a planted KV revision would only race the worker's compare-and-swap.
        eprintln!("skipping: embedded mode only (it writes into --uploads)");
        return;
    }
    let bytes = tagged_jpeg(&photo("06-grey-grayscale.jpg"), "early");
    let (id, worker) = stalled_job(&server, "grey.jpg", &bytes, "?presets=small,thumb").await;

    // The worker, stopped, stands where it has renamed the thumbnail into place
    // and not yet written the final record.
    let record_path = server.uploads.join(format!("jobs/{id}.json"));
    let mut rec: Value =
        serde_json::from_slice(&std::fs::read(&record_path).expect("record")).expect("json");
    rec["state"] = Value::from("processing");
    std::fs::write(&record_path, serde_json::to_vec(&rec).expect("json")).expect("rewrite");
    let thumb = std::fs::read(test_photo("04-fallenleaf.jpg")).expect("a JPEG");
    let processed = server.uploads.join("processed");
    std::fs::create_dir_all(&processed).expect("processed dir");
    std::fs::write(processed.join(format!("{id}-thumb.jpg")), &thumb).expect("output");

    let mut conn = Conn::open(server.addr).await.expect("connect");
    let url = format!("/images/{id}/thumb");
    let get = conn.get(&url).await.expect("get");
    assert_eq!(get.status, StatusCode::OK, "{:?}", get.body);
    assert!(get.body[..] == thumb[..], "the body is the file");
    assert_eq!(get.header("content-type"), Some("image/jpeg"));
    let etag = format!("\"{}\"", pixpool_store::output_etag(&thumb));
    assert_eq!(get.header("etag"), Some(etag.as_str()));
    assert_eq!(
        get.header("cache-control"),
        Some("no-cache"),
        "the job may still fail: not immutable yet"
    );
    let cached = conn
        .request(Method::GET, &url, &[("if-none-match", &etag)])
        .await
        .expect("conditional get");
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    let head = conn.request(Method::HEAD, &url, &[]).await.expect("head");
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(thumb.len().to_string().as_str())
    );

    // The variant not yet written is still 409.
    let small = conn.get(&format!("/images/{id}/small")).await.expect("get");
    assert_problem(&small, StatusCode::CONFLICT, "variant not written yet");

    // The worker goes on and replaces the file with its own; done is immutable.
    resume_process(worker);
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");
    let done = conn.get(&url).await.expect("get");
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(
        done.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
}

/// Mean colour of each cell of an 8×5 grid.
fn grid_8x5(image: &image::RgbImage) -> Vec<[f64; 3]> {
    let (w, h) = image.dimensions();
    let mut cells = Vec::new();
    for row in 0..5 {
        for col in 0..8 {
            let (x0, x1) = (col * w / 8, (col + 1) * w / 8);
            let (y0, y1) = (row * h / 5, (row + 1) * h / 5);
            let mut sum = [0f64; 3];
            for y in y0..y1 {
                for x in x0..x1 {
                    for (c, v) in image.get_pixel(x, y).0.iter().enumerate() {
                        sum[c] += f64::from(*v);
                    }
                }
            }
            let n = f64::from((x1 - x0) * (y1 - y0));
            cells.push(sum.map(|s| s / n));
        }
    }
    cells
}

fn mean_grid_distance(a: &[[f64; 3]], b: &[[f64; 3]]) -> f64 {
    let diffs: Vec<f64> = a
        .iter()
        .zip(b)
        .flat_map(|(p, q)| (0..3).map(move |c| (p[c] - q[c]).abs()))
        .collect();
    diffs.iter().sum::<f64>() / diffs.len() as f64
}

/// An upload tagged with a Display P3 profile is served as sRGB: the variant matches
/// the sRGB picture the file was made from (`test-data/04-fallenleaf.jpg`, converted
/// into P3 by LittleCMS), which the same file read without its profile is far from.
/// The imaging crate's `tests/colour.rs` measures the conversion against LittleCMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_p3_upload_is_served_as_srgb() {
    let server = Server::start(1, 1, &[]);
    let mut conn = Conn::open(server.addr).await.expect("connect");
    let p3 = photo("04-fallenleaf-p3.jpg");
    let resp = conn
        .upload_to("/upload?presets=medium", &[("image", Some("p3.jpg"), &p3)])
        .await
        .expect("send");
    let id = accepted_id(&resp, "p3");
    let job = wait_final(server.addr, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "done", "{job}");
    let url = job["outputs"][0]["url"].as_str().expect("url");
    let get = conn.get(url).await.expect("get");
    assert_eq!(get.status, StatusCode::OK, "{url}");
    let served = image::load_from_memory(&get.body)
        .expect("the variant decodes")
        .to_rgb8();
    assert_eq!(served.dimensions(), (400, 250), "never upscaled");
    let srgb = image::load_from_memory(&photo("04-fallenleaf.jpg"))
        .expect("the source decodes")
        .resize_exact(400, 250, image::imageops::FilterType::Lanczos3)
        .to_rgb8();
    let unmanaged = image::load_from_memory(&p3).expect("decodes").to_rgb8();
    let truth = grid_8x5(&srgb);
    let converted = mean_grid_distance(&grid_8x5(&served), &truth);
    let ignored = mean_grid_distance(&grid_8x5(&unmanaged), &truth);
    eprintln!("served vs sRGB: {converted:.2}; profile ignored: {ignored:.2}");
    assert!(
        ignored > 5.0,
        "the P3 file must differ from sRGB: {ignored:.2}"
    );
    assert!(converted < 1.5, "served vs sRGB: {converted:.2}");
}
