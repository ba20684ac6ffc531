//! A small agent turn with causal links, then a restart.
//!
//! ```text
//! cargo run --example agent_dag --features redb
//! ```
//!
//! The runtime appends a user message, a plan, a tool call and its result,
//! spawns a sub-agent into a session of its own (its own lane), and sends
//! two UI events that require an acknowledgement. A UI thread, subscribed
//! to the UI session, applies the first and acknowledges it with a signal
//! upstream; the runtime, subscribed to its own session, sees that signal
//! arrive live. Then the store is dropped and opened again over the same
//! redb file, and the turn's tree and the still-open acknowledgement are
//! printed from the causal index.
//!
//! Exits non-zero if anything it checks is not so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use livereplay::dag::{Dag, UpstreamSignal};
use livereplay::durable::RedbLog;
use livereplay::{Cursor, EventRef, Links, ReplayStore, Revision, SessionKey, Utf8};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const WAIT: Duration = Duration::from_secs(10);

fn open(path: &std::path::Path) -> Result<ReplayStore<String>> {
    Ok(ReplayStore::builder()
        .durable(Arc::new(RedbLog::open(path)?), Utf8)
        .build()?)
}

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("livereplay-agent-dag-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&dir.join("log.redb"));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(path: &std::path::Path) -> Result<()> {
    let main = SessionKey::new("acme", "turn-1")?;
    let sub = SessionKey::new("acme", "turn-1.researcher")?;
    let ui = SessionKey::new("acme", "turn-1.ui")?;

    let root;
    {
        let store = Arc::new(open(path)?);
        // The runtime listens to its own session for signals from downstream.
        let mut runtime_inbox = store.subscribe_after_cursor(&Cursor::start(main.clone()))?;

        let say = |key: &SessionKey, text: &str, links: Links| {
            store.append_linked(key, Revision(1), text.to_owned(), links)
        };
        let user = say(
            &main,
            "user: compare the two papers",
            Links::new().kind("user_message"),
        )?;
        root = user.reference();
        let plan = say(
            &main,
            "plan: search, then delegate the reading",
            Links::new().parent(user.reference()).kind("plan"),
        )?;
        let call = say(
            &main,
            "tool_call: search(\"papers\")",
            Links::new()
                .parent(plan.reference())
                .kind("tool_call")
                .correlation("search-1"),
        )?;
        say(
            &main,
            "tool_result: 2 hits",
            Links::new()
                .parent(call.reference())
                .kind("tool_result")
                .correlation("search-1"),
        )?;
        let spawn = say(
            &sub,
            "sub-agent: reading both",
            Links::new()
                .parent(plan.reference())
                .kind("agent_start")
                .lane("researcher"),
        )?;
        let summary = say(
            &sub,
            "sub-agent: summary ready",
            Links::new()
                .parent(spawn.reference())
                .kind("agent_result")
                .lane("researcher"),
        )?;
        let render = say(
            &ui,
            "ui: show the summary",
            Links::new()
                .parent(summary.reference())
                .kind("render")
                .lane("ui")
                .requires_ack(),
        )?;
        say(
            &ui,
            "ui: ask for a rating",
            Links::new()
                .parent(summary.reference())
                .kind("render")
                .lane("ui")
                .requires_ack(),
        )?;

        // The UI applies the first render and acknowledges it, upstream too.
        let ui_thread = {
            let store = Arc::clone(&store);
            let ui = ui.clone();
            std::thread::spawn(move || -> Result<()> {
                let mut inbox = store.subscribe_after_cursor(&Cursor::start(ui))?;
                let shown = inbox.next_timeout(WAIT)?;
                let dag = store.dag()?;
                dag.wait_indexed(&shown.reference(), WAIT)?;
                dag.acknowledge(&shown.reference())?;
                dag.signal_upstream(
                    &shown.reference(),
                    &UpstreamSignal::Ack,
                    |signal, target| format!("{} for {target}", signal.kind()),
                )?;
                Ok(())
            })
        };
        ui_thread.join().map_err(|_| "the UI thread panicked")??;

        // The runtime sees the acknowledgement live, after its own events.
        let signal = loop {
            let event = runtime_inbox.next_timeout(WAIT)?;
            if event.links().and_then(|l| l.kind.as_deref()) == Some("livereplay.signal.ack") {
                break event;
            }
        };
        println!("runtime saw live: {}", signal.payload());
        check(
            signal.links().and_then(|l| l.parent.clone()) == Some(render.reference()),
            "the signal names the acknowledged render as its parent",
        )?;
        // Everything durable before the restart (dropping the store also
        // drains the persister; this makes the point explicit).
        for key in [&main, &sub, &ui] {
            if let Some(last) = store.latest_position(key) {
                store.wait_durable(key, last, WAIT)?;
            }
        }
    }

    println!("-- restart --");
    let store = open(path)?;
    let dag = store.dag()?;
    let lines = print_tree(&dag, &root)?;
    check(lines == 10, &format!("the tree has 10 events ({lines})"))?;
    let open = dag.unacknowledged("acme", 10)?;
    println!("open acknowledgements:");
    for event in &open.events {
        println!("  {}  {}", event.reference(), event.payload());
    }
    check(
        open.events.len() == 1 && open.events[0].payload() == "ui: ask for a rating",
        "exactly the unrated render is still open",
    )?;
    let chain = dag.correlation_chain("acme", "search-1", 10)?;
    check(
        chain.events.len() == 2,
        "the search's correlation chain has both events",
    )?;
    let researcher = dag.find_by_kind("acme", "agent_result", 3, 3, 10)?;
    check(
        researcher.events.len() == 1,
        "the sub-agent's result is at depth 3 (user, plan, start)",
    )?;
    println!("ok: the tree, the open acknowledgement and the chains survived the restart");
    Ok(())
}

/// Prints the tree under `root` (depth-first, indented by depth) and returns
/// how many events it printed.
fn print_tree(dag: &Dag<'_, String>, root: &EventRef) -> Result<usize> {
    let below = dag.descendants(root, 1000)?;
    let mut children: HashMap<EventRef, Vec<EventRef>> = HashMap::new();
    let mut text: HashMap<EventRef, String> = HashMap::new();
    let root_event = dag.read(root)?.ok_or("the root is gone")?;
    text.insert(root.clone(), root_event.payload().clone());
    for event in &below.events {
        let parent = event
            .links()
            .and_then(|l| l.parent.clone())
            .ok_or("a descendant without a parent")?;
        children.entry(parent).or_default().push(event.reference());
        text.insert(event.reference(), event.payload().clone());
    }
    let mut printed = 0;
    let mut stack = vec![(root.clone(), 0usize)];
    while let Some((event, depth)) = stack.pop() {
        let node = dag.node(&event)?;
        let kind = node
            .as_ref()
            .and_then(|n| n.links.kind.clone())
            .unwrap_or_default();
        let acked = if node.as_ref().is_some_and(|n| n.acknowledged) {
            "  [acknowledged]"
        } else {
            ""
        };
        println!(
            "{}{} ({kind}, {}){acked}",
            "  ".repeat(depth),
            text[&event],
            event
        );
        printed += 1;
        for child in children.get(&event).into_iter().flatten().rev() {
            stack.push((child.clone(), depth + 1));
        }
    }
    Ok(printed)
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}
