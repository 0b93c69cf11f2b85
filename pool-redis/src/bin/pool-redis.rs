//! `pool-redis`: operate a queue without any user code.
//!
//! ```text
//! pool-redis [--json] status   URL QUEUE              depth, dead letters, each live worker
//! pool-redis [--json] workers  URL QUEUE [--remove-stale SECS]
//!                                                     every consumer of the group, live or dead
//! pool-redis [--json] dead     URL QUEUE [N | --show ID | --purge]
//!                                                     the newest N dead letters (20), one, or none
//! pool-redis [--json] requeue  URL QUEUE (ID… | --all) dead letters back into the queue
//! pool-redis [--json] purge    URL QUEUE              remove the jobs no worker took (answered
//!                                                     Cancelled to their clients)
//! pool-redis [--json] cancel   URL QUEUE CLIENT [JOB] a client's jobs (or one): removed if
//!                                                     waiting, stopped where they run
//! ```
//!
//! Tables for people, `--json` for programs. Exit status: 0, 1 on an error (printed), 2 on a
//! usage error. Passwords in URLs never appear in the output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pool_redis::{Admin, DeadLetter};
use serde_json::{json, Value};

const USAGE: &str = "usage: pool-redis [--json] COMMAND URL QUEUE [ARGS]
commands:
  status   URL QUEUE                       jobs waiting and running, dead letters, live workers
  workers  URL QUEUE [--remove-stale SECS] every consumer of the queue's group, live or dead
  dead     URL QUEUE [N | --show ID | --purge]
                                           the newest N dead letters (default 20), one in full,
                                           or delete them all
  requeue  URL QUEUE (ID... | --all)       put dead letters back in the queue
  purge    URL QUEUE                       remove the jobs no worker has taken
  cancel   URL QUEUE CLIENT [JOB]          cancel a client's jobs, or one of them";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = take_flag(&mut args, "--json");
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let [command, url, queue, rest @ ..] = &args[..] else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let result = Admin::connect(url, queue).and_then(|admin| {
        let out = match command.as_str() {
            "status" => status(&admin, queue, json),
            "workers" => workers(&admin, rest, json),
            "dead" => dead(&admin, rest, json),
            "requeue" => requeue(&admin, rest, json),
            "purge" => {
                let n = admin.purge()?;
                Ok(if json {
                    json!({ "purged": n }).to_string()
                } else {
                    format!("removed {n} waiting jobs from {queue}")
                })
            }
            "cancel" => cancel(&admin, rest, json),
            _ => usage(),
        }?;
        println!("{out}");
        Ok(())
    });
    if let Err(err) = result {
        eprintln!("pool-redis: {err}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

fn status(admin: &Admin, queue: &str, json: bool) -> Result<String, pool_redis::Error> {
    let s = admin.status()?;
    let dead = admin.dead_count()?;
    if json {
        let workers: Vec<Value> = s
            .workers
            .iter()
            .map(|w| {
                json!({
                    "name": w.name, "host": w.host, "pid": w.pid, "processes": w.processes,
                    "alive": w.alive, "last_heartbeat_ms": w.last_seen.as_millis() as u64,
                    "jobs_done": w.jobs_done, "failures": w.failures,
                    "jobs_per_minute": w.jobs_per_minute, "held": w.held,
                    "draining": w.draining, "uptime_s": w.uptime.as_secs(),
                })
            })
            .collect();
        return Ok(json!({
            "queue": s.queue, "waiting": s.waiting, "pending": s.pending, "dead": dead,
            "workers": workers,
        })
        .to_string());
    }
    let mut out = format!(
        "queue {queue}: {} waiting, {} running, {dead} dead letters, {} workers alive\n",
        s.waiting,
        s.pending,
        s.workers.iter().filter(|w| w.alive).count()
    );
    let rows: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.host.clone(),
                w.pid.to_string(),
                w.processes.to_string(),
                w.jobs_done.to_string(),
                w.failures.to_string(),
                w.jobs_per_minute.to_string(),
                w.held.to_string(),
                format!("{:.1}s", w.last_seen.as_secs_f64()),
                match (w.alive, w.draining) {
                    (true, true) => "draining",
                    (true, false) => "alive",
                    (false, _) => "silent",
                }
                .to_owned(),
                human(w.uptime),
            ]
        })
        .collect();
    out += &table(
        &[
            "WORKER",
            "HOST",
            "PID",
            "PROCS",
            "DONE",
            "FAILED",
            "PER MIN",
            "HELD",
            "HEARTBEAT",
            "STATE",
            "UP",
        ],
        &rows,
    );
    Ok(out)
}

fn workers(admin: &Admin, rest: &[String], json: bool) -> Result<String, pool_redis::Error> {
    let removed = match rest {
        [] => Vec::new(),
        [flag, secs] if flag == "--remove-stale" => {
            let secs: u64 = secs.parse().unwrap_or_else(|_| usage());
            admin.remove_stale_consumers(Duration::from_secs(secs))?
        }
        _ => usage(),
    };
    let live = admin.status()?.workers;
    let consumers = admin.consumers()?;
    if json {
        let list: Vec<Value> = consumers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "pending": c.pending, "idle_ms": c.idle.as_millis() as u64,
                    "alive": live.iter().any(|w| w.name == c.name && w.alive),
                })
            })
            .collect();
        return Ok(json!({ "consumers": list, "removed": removed }).to_string());
    }
    let rows: Vec<Vec<String>> = consumers
        .iter()
        .map(|c| {
            let alive = live.iter().any(|w| w.name == c.name && w.alive);
            vec![
                c.name.clone(),
                c.pending.to_string(),
                human(c.idle),
                if alive { "alive" } else { "no heartbeat" }.to_owned(),
            ]
        })
        .collect();
    let mut out = table(&["CONSUMER", "HOLDS", "IDLE", "STATE"], &rows);
    for name in removed {
        out += &format!("removed {name}\n");
    }
    Ok(out)
}

fn dead(admin: &Admin, rest: &[String], json: bool) -> Result<String, pool_redis::Error> {
    match rest {
        [flag] if flag == "--purge" => {
            let n = admin.purge_dead()?;
            Ok(if json {
                json!({ "purged": n }).to_string()
            } else {
                format!("deleted {n} dead letters")
            })
        }
        [flag, id] if flag == "--show" => {
            let letter = admin.dead_letter(id)?;
            Ok(match (letter, json) {
                (None, true) => Value::Null.to_string(),
                (None, false) => format!("no dead letter {id}"),
                (Some(l), true) => letter_json(&l, true).to_string(),
                (Some(l), false) => {
                    let mut out = String::new();
                    for (k, v) in letter_fields(&l) {
                        out += &format!("{k:>10}: {v}\n");
                    }
                    for (k, v) in &l.fields {
                        out += &format!("{:>10}: {}\n", format!("job.{k}"), shown(v));
                    }
                    out
                }
            })
        }
        [] | [_] => {
            let n = match rest {
                [n] => n.parse().unwrap_or_else(|_| usage()),
                _ => 20,
            };
            let letters = admin.dead_letters(n)?;
            if json {
                let list: Vec<Value> = letters.iter().map(|l| letter_json(l, false)).collect();
                return Ok(Value::Array(list).to_string());
            }
            let rows: Vec<Vec<String>> = letters
                .iter()
                .map(|l| {
                    vec![
                        l.id.clone(),
                        l.kind.to_string(),
                        l.task.clone(),
                        l.attempts.to_string(),
                        ago(l.time),
                        truncate(&l.reason, 70),
                    ]
                })
                .collect();
            Ok(table(
                &["ID", "KIND", "TASK", "ATTEMPTS", "AGE", "REASON"],
                &rows,
            ))
        }
        _ => usage(),
    }
}

fn requeue(admin: &Admin, rest: &[String], json: bool) -> Result<String, pool_redis::Error> {
    let n = match rest {
        [] => usage(),
        [all] if all == "--all" => admin.requeue_all_dead()?,
        ids => admin.requeue_dead(&ids.iter().map(String::as_str).collect::<Vec<_>>())?,
    };
    Ok(if json {
        json!({ "requeued": n }).to_string()
    } else {
        format!("requeued {n} dead letters")
    })
}

fn cancel(admin: &Admin, rest: &[String], json: bool) -> Result<String, pool_redis::Error> {
    match rest {
        [client] => {
            let n = admin.cancel_client(client)?;
            Ok(if json {
                json!({ "client": client, "removed_waiting": n }).to_string()
            } else {
                format!("cancelled client {client}: {n} waiting jobs removed; running ones stop")
            })
        }
        [client, job] => {
            let job: u64 = job.parse().unwrap_or_else(|_| usage());
            let waiting = admin.cancel_job(client, job)?;
            Ok(if json {
                json!({ "client": client, "job": job, "was_waiting": waiting }).to_string()
            } else if waiting {
                format!("cancelled job {job} of {client}: removed before it ran")
            } else {
                format!("cancelled job {job} of {client}: stopped where it runs, if it does")
            })
        }
        _ => usage(),
    }
}

fn letter_fields(l: &DeadLetter) -> Vec<(&'static str, String)> {
    vec![
        ("id", l.id.clone()),
        ("kind", l.kind.to_string()),
        ("reason", l.reason.clone()),
        ("task", l.task.clone()),
        ("attempts", l.attempts.to_string()),
        ("age", ago(l.time)),
        ("worker", l.worker.clone()),
        ("entry", l.entry.clone()),
        (
            "client",
            l.client
                .as_ref()
                .map_or_else(String::new, |(c, j)| format!("{c} job {j}")),
        ),
    ]
}

fn letter_json(l: &DeadLetter, with_fields: bool) -> Value {
    let time_ms = l
        .time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut v = json!({
        "id": l.id, "kind": l.kind.to_string(), "reason": l.reason, "task": l.task,
        "attempts": l.attempts, "time_ms": time_ms, "worker": l.worker, "entry": l.entry,
        "client": l.client.as_ref().map(|(c, _)| c.clone()),
        "job": l.client.as_ref().map(|(_, j)| *j),
    });
    if with_fields {
        let fields: serde_json::Map<String, Value> = l
            .fields
            .iter()
            .map(|(k, b)| (k.clone(), Value::String(shown(b))))
            .collect();
        v["fields"] = Value::Object(fields);
    }
    v
}

/// A field's bytes as text if they are, else as hex.
fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn ago(t: SystemTime) -> String {
    human(SystemTime::now().duration_since(t).unwrap_or_default())
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

fn truncate(s: &str, n: usize) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() <= n {
        one_line
    } else {
        one_line.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out += cell;
            } else {
                out += &format!("{cell:<w$}  ");
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}
