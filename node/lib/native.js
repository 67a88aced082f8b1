// Loads the compiled addon (build/nmlx.node, made by `npm install`).
import { createRequire } from "node:module";
import { NmlxError, codes } from "./errors.js";

const require = createRequire(import.meta.url);
let native;
try {
  native = require("../build/nmlx.node");
} catch (e) {
  throw new NmlxError(codes.NOT_BUILT,
    `the nmlx native addon is not built (${e.message}): run 'npm rebuild nmlx' (in a clone: 'npm install' ` +
    "in node/); if your npm skipped its install script: 'npm install-scripts approve nmlx', then rebuild",
    { cause: e });
}
export default native;
