//! `stripe-inbox send-test-event`: the local `stripe trigger`.

use std::time::{Duration, Instant};

use super::options::{self, Opt};
use crate::error::{Error, Result};
use crate::event::{signature, testevent};
use crate::time;

pub const USAGE: &str = "\
usage: stripe-inbox send-test-event [--config PATH] [--type TYPE] [--url URL]

Builds a realistic event from Stripe's example objects, signs it with the first configured secret
(the Stripe-Signature header Stripe would send) and POSTs it: the local equivalent of
`stripe trigger`. Prints the answer; exits 1 unless it is 2xx.

  --type TYPE   the event type (default payment_intent.succeeded); --type list shows them all
  --url URL     where to send it (default http://<[webhook] listen><[webhook] path>)
";

const OPTIONS: &[Opt] = &[
    Opt {
        long: "type",
        short: Some('t'),
        value: true,
    },
    Opt {
        long: "url",
        short: Some('u'),
        value: true,
    },
];

pub fn run(parser: lexopt::Parser) -> Result<()> {
    let Some(opts) = options::parse(parser, USAGE, OPTIONS, 0)? else {
        return Ok(());
    };
    let event_type = opts
        .get("type")
        .unwrap_or(testevent::KNOWN_TYPES[0])
        .to_string();
    if event_type == "list" {
        for t in testevent::KNOWN_TYPES {
            println!("{t}");
        }
        return Ok(());
    }
    let config = opts.load_config()?;
    let secret = config.webhook_secrets()?.remove(0);

    // Build and sign it as Stripe would.
    let now = time::now_ms() / 1000;
    let event = testevent::build(&event_type, now).ok_or_else(|| {
        Error::usage(
            format!("no test event for type {event_type:?}"),
            "stripe-inbox send-test-event --type list",
        )
    })?;
    let body = serde_json::to_vec_pretty(&event).map_err(|err| Error::Json {
        what: "encode event".into(),
        err,
    })?;
    let url = opts.get("url").map(String::from).unwrap_or_else(|| {
        let listen = config
            .webhook
            .listen
            .replace("0.0.0.0", "127.0.0.1")
            .replace("[::]", "[::1]");
        format!("http://{listen}{}", config.webhook.path)
    });
    let header = signature::sign(&body, &secret, now);

    // Send it.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let started = Instant::now();
    let post = || format!("POST {url}");
    let mut response = agent
        .post(&url)
        .header("Content-Type", "application/json; charset=utf-8")
        .header("User-Agent", "stripe-inbox send-test-event")
        .header("Stripe-Signature", &header)
        .send(&body[..])
        .map_err(|e| Error::Http {
            what: post(),
            msg: e.to_string(),
        })?;
    let status = response.status().as_u16();
    let answer = response.body_mut().read_to_string().unwrap_or_default();
    println!(
        "POST {url} {} {event_type} -> {status} in {:.1} ms: {}",
        event["id"].as_str().unwrap_or(""),
        started.elapsed().as_secs_f64() * 1000.0,
        answer.trim()
    );
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(Error::Http {
            what: post(),
            msg: format!("answered {status}"),
        })
    }
}
