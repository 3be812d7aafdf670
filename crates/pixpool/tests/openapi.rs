//! `openapi.json` is the API's published contract: its paths and methods are
//! exactly the server's routes, and every status the real server answers for
//! them is one the document lists. (CI also runs a real validator over it.)

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};
use serde_json::Value;

use pixpool_testkit::*;

fn document() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let text = std::fs::read_to_string(&path).expect("read openapi.json");
    serde_json::from_str(&text).expect("openapi.json is JSON")
}

const METHODS: &[&str] = &["get", "head", "post", "put", "delete", "patch", "options"];

/// (path template, upper-case method) of every operation in the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        for m in METHODS {
            if item.get(*m).is_some() {
                ops.insert((path.clone(), m.to_uppercase()));
            }
        }
    }
    ops
}

/// `value` has every required property of the schema `name` and no other
/// (one level deep, and into `outputs[]`): the document says what is served.
fn conforms(doc: &Value, value: &Value, name: &str) {
    let schema = &doc["components"]["schemas"][name];
    let props = schema["properties"].as_object().expect("properties");
    let obj = value.as_object().expect("an object");
    for key in obj.keys() {
        assert!(
            props.contains_key(key),
            "{name}: `{key}` is served but not documented"
        );
    }
    for key in schema["required"].as_array().into_iter().flatten() {
        let key = key.as_str().expect("name");
        assert!(
            obj.contains_key(key),
            "{name}: `{key}` is documented but not served"
        );
    }
    if name == "Job" {
        for output in value["outputs"].as_array().into_iter().flatten() {
            conforms(doc, output, "Output");
        }
    }
}

#[test]
fn the_document_lists_exactly_the_servers_routes() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented = operations(&doc);
    let served: BTreeSet<(String, String)> = pixpool_front::routes::TABLE
        .iter()
        .flat_map(|(path, methods)| methods.iter().map(|m| (path.to_string(), m.to_string())))
        .collect();
    assert_eq!(
        documented, served,
        "openapi.json and the front's routes differ"
    );
}

/// Every documented operation, sent to a real server: its answer is one the
/// document lists for it, and undocumented paths and methods are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_answers_are_documented() {
    let doc = document();
    let server = Server::start(1, 1, &[]);
    let photo = std::fs::read(test_photo("06-grey-grayscale.jpg")).expect("photo");
    let id = accepted_id(&upload(server.addr, "a.jpg", &photo).await, "upload");
    assert_eq!(
        wait_final(server.addr, &id, Duration::from_secs(60)).await["state"],
        "done"
    );
    // DELETE gets a job of its own: the other operations read `id`.
    let doomed = accepted_id(
        &upload(server.addr, "c.jpg", &unique_jpeg(&photo, 9_000_002)).await,
        "upload",
    );
    for (template, method) in operations(&doc) {
        let job = if method == "DELETE" { &doomed } else { &id };
        let path = template.replace("{id}", job).replace("{preset}", "thumb");
        let mut conn = Conn::open(server.addr).await.expect("connect");
        let resp = if method == "POST" {
            let req = multipart_request(
                server.addr,
                &path,
                &[("image", Some("b.jpg"), &unique_jpeg(&photo, 9_000_001))],
            );
            conn.send(req).await.expect("send")
        } else {
            let req = Request::builder()
                .method(method.as_str())
                .uri(&path)
                .header("host", server.addr.to_string())
                .body(Full::new(Bytes::new()))
                .expect("request");
            conn.send(req).await.expect("send")
        };
        if template == "/jobs/{id}" && method == "GET" {
            conforms(&doc, &resp.json(), "Job");
        }
        let op = &doc["paths"][&template][method.to_lowercase()];
        let code = resp.status.as_u16().to_string();
        assert!(
            op["responses"].get(&code).is_some(),
            "{method} {template} answered {code}, which openapi.json does not list"
        );
    }
    let mut conn = Conn::open(server.addr).await.expect("connect");
    assert_eq!(
        conn.get("/no/such/route").await.expect("send").status,
        StatusCode::NOT_FOUND
    );
    let req = Request::put(format!("/jobs/{id}"))
        .header("host", server.addr.to_string())
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(
        conn.send(req).await.expect("send").status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}
