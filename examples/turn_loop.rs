//! A runtime's turn loop streams tokens into a `livereplay` store on one
//! thread; a host on another thread reads them, disconnects, resumes from
//! its cursor, falls behind on purpose, gets a gap, reloads a snapshot from
//! the durable transcript and resubscribes.
//!
//! Run: `cargo run --release --example turn_loop`
//!
//! It checks what it prints: the host's final text must equal the runtime's
//! transcript, or the example exits non-zero.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use livereplay::{
    Config, Cursor, Error, GapReason, NextTimeoutError, ReplayStore, Revision, SessionKey,
};

/// The session's capacity: small, so that falling behind is quick.
const CAPACITY: usize = 32;
const WAIT: Duration = Duration::from_secs(10);

/// The runtime's durable record of the turn (a database in real life): what
/// a host reloads a snapshot from after a gap.
type Transcript = Arc<Mutex<Vec<String>>>;

/// What the host asks the runtime to do next.
enum Step {
    Stream(Vec<String>),
    Finish,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Arc::new(ReplayStore::<String>::new(
        Config::default().with_capacity(CAPACITY),
    )?);
    let key = SessionKey::new("acme", "chat/42")?;
    let transcript: Transcript = Arc::default();
    let (steps, runtime_inbox) = mpsc::channel::<Step>();

    // The runtime: appends inline, never awaits, never waits for the host.
    let runtime = {
        let session = store.session(&key)?;
        let transcript = Arc::clone(&transcript);
        thread::spawn(move || -> Result<(), Error> {
            for step in runtime_inbox {
                let tokens = match step {
                    Step::Stream(tokens) => tokens,
                    Step::Finish => vec!["[done]".to_string()],
                };
                for token in tokens {
                    transcript.lock().expect("transcript").push(token.clone());
                    session.append(Revision(1), token)?;
                    thread::sleep(Duration::from_micros(200));
                }
            }
            Ok(())
        })
    };

    // The host.
    let words = |text: &str| {
        text.split_inclusive(' ')
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let mut shown = String::new();

    // 1. Subscribe from the start, read a few tokens live, then lose the
    //    connection. All the host keeps is the cursor string it last saw.
    let mut live = store.subscribe_scoped(&key, &Cursor::start(key.clone()))?;
    steps.send(Step::Stream(words(
        "The quick brown fox jumps over the lazy dog. ",
    )))?;
    for _ in 0..4 {
        shown.push_str(live.next_timeout(WAIT)?.payload());
    }
    let saved = live.cursor().to_string();
    drop(live);
    println!("host: read {shown:?}, disconnected at {saved}");

    // 2. Reconnect with the saved cursor: the buffered rest, exactly once.
    let resume_from = Cursor::parse_for(&key, &saved)?;
    let mut live = store.subscribe_scoped(&key, &resume_from)?;
    while !shown.ends_with("dog. ") {
        shown.push_str(live.next_timeout(WAIT)?.payload());
    }
    let saved = live.cursor().clone();
    drop(live);
    println!(
        "host: resumed after position {}, text now {shown:?}",
        resume_from.position()
    );

    // 3. Stay away while the runtime streams more than the ring keeps.
    let long_answer = (1..=3 * CAPACITY)
        .map(|i| format!("w{i} "))
        .collect::<Vec<_>>();
    steps.send(Step::Stream(long_answer))?;
    let target = transcript_len_after(&transcript, saved.position() as usize + 3 * CAPACITY);
    println!("runtime: streamed {target} tokens in all while the host was away");

    // 4. Come back: the cursor fell out of the window, so the store answers
    //    with a precise gap instead of silently skipping events.
    let gap = match store.subscribe_scoped(&key, &saved) {
        Err(Error::Gap(gap)) => gap,
        Err(other) => return Err(other.into()),
        Ok(_) => return Err("expected a gap after falling behind".into()),
    };
    assert_eq!(gap.reason, GapReason::Trimmed);
    println!(
        "host: gap ({:?}), {} events missed; reloading a snapshot up to position {}",
        gap.reason,
        gap.missed.unwrap_or_default(),
        gap.latest.position()
    );

    // 5. Reload the snapshot the gap points at, resubscribe after it, and
    //    follow the rest of the turn live.
    shown = transcript.lock().expect("transcript")[..gap.latest.position() as usize].concat();
    let mut live = store.subscribe_scoped(&key, &gap.latest)?;
    steps.send(Step::Finish)?;
    loop {
        match live.next_timeout(WAIT) {
            Ok(event) => {
                shown.push_str(event.payload());
                if event.payload() == "[done]" {
                    break;
                }
            }
            Err(NextTimeoutError::Timeout) => return Err("the runtime went quiet".into()),
            Err(other) => return Err(other.into()),
        }
    }
    drop(steps);
    runtime.join().map_err(|_| "runtime thread panicked")??;

    let expected = transcript.lock().expect("transcript").concat();
    assert_eq!(shown, expected, "the host's text must equal the transcript");
    println!(
        "host: resubscribed after the snapshot; final text matches the transcript ({} tokens, {} bytes)",
        store.current_cursor(&key).position(),
        shown.len()
    );
    Ok(())
}

/// Waits (bounded) until the transcript holds `len` tokens; returns its length.
fn transcript_len_after(transcript: &Transcript, len: usize) -> usize {
    for _ in 0..10_000 {
        let now = transcript.lock().expect("transcript").len();
        if now >= len {
            return now;
        }
        thread::sleep(Duration::from_millis(1));
    }
    transcript.lock().expect("transcript").len()
}
