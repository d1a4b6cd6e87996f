// Checks at `serve` start: containerd's config (CRI `config_path` set and including the directory
// peerpull writes hosts.toml to, `discard_unpacked_layers` off), the same checks `peerpull doctor`
// makes. Each problem becomes one clear warning with what to do; nothing here is ever fatal (the
// registry serves what it can either way), and it never delays startup.

import { checkContainerdConfig, type ContainerdConfigReport } from './containerd-config.js';
import type { Config } from './config.js';
import type { Logger } from './log.js';

/** Runs the checks and logs them; resolves with the report (undefined when the check itself failed). */
export async function preflight(config: Config, log: Logger): Promise<ContainerdConfigReport | undefined> {
  let report: ContainerdConfigReport;
  try {
    report = await checkContainerdConfig(config.containerdConfigFile, config.containerdConfigPath);
  } catch (err) {
    log.warn('preflight: could not check containerd\'s config', { file: config.containerdConfigFile, error: err });
    return undefined;
  }
  let problems = 0;
  for (const f of report.findings) {
    if (f.severity === 'warn' || f.severity === 'fail') {
      problems++;
      log.warn(`preflight: ${f.message}`, { check: f.id, file: report.file, ...(f.fix ? { fix: f.fix } : {}) });
    }
  }
  if (problems === 0) {
    log.info('preflight: containerd config is fine for peerpull', {
      file: report.file,
      configPath: report.configPaths,
      discardUnpackedLayers: report.discardUnpackedLayers ?? false,
      ...(report.imports.length ? { imports: report.imports } : {}),
    });
  }
  return report;
}
