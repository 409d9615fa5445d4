'use strict';
// Adds CPython bytecode to each Python function's zip once serverless-python-requirements has put
// the dependencies into it (listed after that plugin in serverless.yml, so its hooks run first).
// The work is done by bytecode.py beside this file, which says why and finds an interpreter of the
// runtime's Python version; this plugin only hands it the zips.
const { spawnSync } = require('child_process');
const path = require('path');

class LambdaBytecode {
  constructor(serverless) {
    this.serverless = serverless;
    this.hooks = {
      'after:package:createDeploymentArtifacts': () => this.addBytecode(),
      'after:deploy:function:packageFunction': () => this.addBytecode(),
    };
  }

  zipsByPythonVersion() {
    const service = this.serverless.service;
    const zips = new Map();
    for (const name of service.getAllFunctions()) {
      const fn = service.getFunction(name);
      const runtime = fn.runtime || service.provider.runtime || '';
      const artifact = fn.package && fn.package.artifact;
      const version = /^python(\d+\.\d+)$/.exec(runtime);
      if (!version || !artifact) continue;
      const list = zips.get(version[1]) || [];
      list.push(path.resolve(this.serverless.serviceDir, artifact));
      zips.set(version[1], list);
    }
    return zips;
  }

  addBytecode() {
    const custom = this.serverless.service.custom || {};
    const python = (custom.pythonRequirements && custom.pythonRequirements.pythonBin) || 'python3';
    const script = path.join(__dirname, 'bytecode.py');
    for (const [version, zips] of this.zipsByPythonVersion()) {
      const done = spawnSync(python, [script, '--python-version', version, ...zips], { stdio: 'inherit' });
      if (done.error || done.status !== 0) {
        const why = done.error ? done.error.message : `exit ${done.status}`;
        throw new this.serverless.classes.Error(`Adding bytecode to the zips failed (${why}); see above.`);
      }
    }
  }
}

module.exports = LambdaBytecode;
