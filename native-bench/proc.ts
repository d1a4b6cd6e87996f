// Reads what the kernel knows about a server process: CPU time (all threads of the process,
// utime + stime from /proc/<pid>/stat) and memory (VmRSS, VmHWM from /proc/<pid>/status).
// Linux only; the benchmark refuses to run elsewhere.

import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';

let ticksPerSecond = 0;

/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on almost every Linux). */
export function clockTicks(): number {
  if (ticksPerSecond === 0) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** utime + stime of one process (all its threads, live and exited), in seconds. */
export function cpuSeconds(pid: number): number {
  const raw = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
  const rest = raw.slice(raw.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime is field 14, stime field 15.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  return (utime + stime) / clockTicks();
}

function statusField(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const raw = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(raw);
  if (!m) throw new Error(`/proc/${pid}/status has no ${field}`);
  return Number(m[1]) * 1024;
}

/** Resident set size in bytes. */
export function rssBytes(pid: number): number {
  return statusField(pid, 'VmRSS');
}

/** Peak resident set size ("high water mark") in bytes. */
export function hwmBytes(pid: number): number {
  return statusField(pid, 'VmHWM');
}

/** Direct children of a process (nginx workers of its master). */
export function childPids(pid: number): number[] {
  try {
    const raw = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
    if (raw) return raw.split(/\s+/).map(Number);
    return [];
  } catch {
    // Kernels without CONFIG_PROC_CHILDREN: scan every process for this parent.
  }
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const raw = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(raw.slice(raw.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

export function sumOver(pids: number[], f: (pid: number) => number): number {
  let total = 0;
  for (const p of pids) total += f(p);
  return total;
}

/** CPU seconds the whole machine spent busy (all cores, every process), from /proc/stat. */
export function machineBusySeconds(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  // user nice system idle iowait irq softirq steal: busy is everything but idle and iowait.
  const busy = f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
  return busy / clockTicks();
}
