// Runs a TensorFlow.js graph model (model.json + weight shards) on TF.js's pure JS CPU backend,
// for timmx's tfjs backend: the runtime a browser or a Node.js app runs the artifact in.
//
//   node run.js info
//   node run.js MODEL_DIR INPUT OUTPUT DIM...
//
// INPUT holds the float32 input (little-endian, C order) of shape DIM...; OUTPUT receives the
// model's first output, float32 the same way. The last line on stdout is JSON: the versions
// (info), or the output's shape. The packages are in node's global folder (images/tfjs/setup.sh).
"use strict";

const fs = require("fs");
const path = require("path");

function load() {
  // TF.js's Node.js hint ("install our node backend...") is not ours to print
  const warn = console.warn;
  console.warn = () => {};
  try {
    const tf = require("@tensorflow/tfjs-core");
    require("@tensorflow/tfjs-backend-cpu");
    const converter = require("@tensorflow/tfjs-converter");
    return { tf, converter };
  } finally {
    console.warn = warn;
  }
}

function artifactsOf(folder) {
  const model = JSON.parse(fs.readFileSync(path.join(folder, "model.json"), "utf8"));
  const specs = [];
  const shards = [];
  for (const group of model.weightsManifest || []) {
    specs.push(...group.weights);
    for (const name of group.paths) shards.push(fs.readFileSync(path.join(folder, name)));
  }
  const data = Buffer.concat(shards);
  return {
    modelTopology: model.modelTopology,
    format: model.format,
    generatedBy: model.generatedBy,
    convertedBy: model.convertedBy,
    signature: model.signature,
    userDefinedMetadata: model.userDefinedMetadata,
    modelInitializer: model.modelInitializer,
    initializerSignature: model.initializerSignature,
    weightSpecs: specs,
    weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength),
  };
}

async function main(argv) {
  const { tf, converter } = load();
  await tf.setBackend("cpu");
  if (argv[0] === "info") {
    return {
      tfjs: tf.version_core,
      converter: converter.version_converter,
      backend: tf.getBackend(),
      node: process.versions.node,
    };
  }
  const [folder, input, output, ...dims] = argv;
  const shape = dims.map(Number);
  const model = await converter.loadGraphModel(tf.io.fromMemory(artifactsOf(folder)));
  const bytes = fs.readFileSync(input);
  const values = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const x = tf.tensor(values, shape, "float32");
  let y = model.predict(x);
  if (Array.isArray(y)) y = y[0];
  else if (!(y instanceof tf.Tensor)) y = Object.values(y)[0];
  const result = await y.cast("float32").data();
  fs.writeFileSync(output, Buffer.from(result.buffer, result.byteOffset, result.byteLength));
  return { shape: y.shape, backend: tf.getBackend() };
}

main(process.argv.slice(2)).then(
  (answer) => console.log(JSON.stringify(answer)),
  (error) => {
    console.error(String((error && error.stack) || error));
    process.exit(1);
  },
);
