// Loads a DICOM SR the way OHIF 3.13 does, with OHIF's own code, and prints what it made.
//
// node load_sr.js SR_FILE CT_FOLDER  ->  JSON on stdout:
//   {displaySet: {isImagingMeasurementReport, measurements}, annotations: [...], error}
//
// The SR and the CT are read with dcmjs and naturalised as OHIF's local-file data source does;
// the CT becomes an OHIF ImageSet whose image ids map to its instances in OHIF's own
// MetadataProvider, which is also cornerstone's metadata provider (as OHIF's cornerstone
// extension registers it). The SR extension's SOP class handler then builds the display set
// and loads it: that is the code that iterates the measurement groups, reads the SCOORDs and
// NUMs and adds each measurement to cornerstone's annotation state (the tool state OHIF
// draws). Only the browser and React are stubbed: nothing of the SR's reading is.
'use strict';

const fs = require('fs');
const path = require('path');
const Module = require('module');

const noop = () => {};
const element = () => ({
  style: {}, getContext: () => null, addEventListener: noop, removeEventListener: noop, dispatchEvent: noop, appendChild: noop, setAttribute: noop,
});
globalThis.window = globalThis;
globalThis.self = globalThis;
globalThis.HTMLDivElement = class HTMLDivElement {};
globalThis.CustomEvent = class CustomEvent { constructor(type, init) { this.type = type; this.detail = init && init.detail; } };
globalThis.document = {
  addEventListener: noop, removeEventListener: noop, attachEvent: noop, createElement: element,
  documentElement: { style: {} }, querySelector: () => null, body: element(), head: element(),
};
globalThis.localStorage = { getItem: () => null, setItem: noop, removeItem: noop };
globalThis.location = { origin: 'http://localhost', href: 'http://localhost/', search: '' };
if (!globalThis.navigator) globalThis.navigator = { userAgent: 'node', platform: 'linux', hardwareConcurrency: 2 };

// React and OHIF's UI packages are needed by the extension's viewport components only.
const anything = new Proxy(function () {}, {
  get: (target, key) => (key === '__esModule' ? false : key === 'default' ? anything : anything),
  apply: () => anything,
  construct: () => anything,
});
const stubs = new Set(['react', '@ohif/ui-next', '@ohif/i18n', '@ohif/extension-cornerstone',
  '@ohif/core/src/contextProviders/SystemProvider', 'classnames', 'prop-types']);
// cornerstone's packages are ES modules: imported once (Node 18 cannot require them) and
// handed to the UMD bundles of OHIF that require them.
const esm = new Map();
const ESM_PACKAGES = ['@cornerstonejs/core', '@cornerstonejs/tools', '@cornerstonejs/adapters',
  '@cornerstonejs/metadata', '@cornerstonejs/utils'];
const load = Module._load;
Module._load = function (request, parent, isMain) {
  if (esm.has(request)) return esm.get(request);
  if (stubs.has(request)) {
    if (request === '@ohif/i18n') return { __esModule: true, default: { t: (s) => s } };
    return anything;
  }
  return load.call(this, request, parent, isMain);
};

let dcmjs, ohif, cornerstone, tools, srExtension;

async function loadPackages() {
  for (const name of ESM_PACKAGES) esm.set(name, await import(name));
  dcmjs = require('dcmjs');
  ohif = require('@ohif/core');
  cornerstone = esm.get('@cornerstonejs/core');
  tools = esm.get('@cornerstonejs/tools');
  srExtension = require('@ohif/extension-cornerstone-dicom-sr').default;
}

function readInstance(file) {
  const bytes = fs.readFileSync(file);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dict = dcmjs.data.DicomMessage.readFile(buffer, { untilTag: '7FE00010', includeUntilTagValue: false }).dict;
  return dcmjs.data.DicomMetaDictionary.naturalizeDataset(dict);
}

async function main() {
  await loadPackages();
  const [srFile, ctFolder] = process.argv.slice(2);
  const { DicomMetadataStore, classes, utils } = ohif;
  const { MetadataProvider, ImageSet } = classes;
  cornerstone.metaData.addProvider(MetadataProvider.get.bind(MetadataProvider), 9999);

  const ct = fs.readdirSync(ctFolder).filter((f) => f.endsWith('.dcm')).sort()
    .map((f) => readInstance(path.join(ctFolder, f)));
  const imageIds = ct.map((instance) => {
    const imageId = `dicomfile:${instance.SOPInstanceUID}`;
    MetadataProvider.addImageIdToUIDs(imageId, {
      StudyInstanceUID: instance.StudyInstanceUID,
      SeriesInstanceUID: instance.SeriesInstanceUID,
      SOPInstanceUID: instance.SOPInstanceUID,
    });
    instance.imageId = imageId;
    return imageId;
  });
  DicomMetadataStore.addInstances(ct);
  const images = new ImageSet(ct);
  images.setAttributes({
    displaySetInstanceUID: 'ct', StudyInstanceUID: ct[0].StudyInstanceUID,
    SeriesInstanceUID: ct[0].SeriesInstanceUID, FrameOfReferenceUID: ct[0].FrameOfReferenceUID,
    Modality: 'CT', sopClassUids: [ct[0].SOPClassUID], isReconstructable: true,
  });

  const sr = readInstance(srFile);
  DicomMetadataStore.addInstances([sr]);
  const services = {
    displaySetService: {
      activeDisplaySets: [images], EVENTS: { DISPLAY_SETS_ADDED: 'added' }, subscribe: noop,
    },
    measurementService: { getSourceMappings: () => [] },
    customizationService: { getCustomization: () => undefined },
    uiNotificationService: { show: (n) => { throw new Error(`OHIF notification: ${n.message}`); } },
  };
  const dataSource = { getImageIdsForDisplaySet: () => imageIds, retrieve: { bulkDataURI: async () => new ArrayBuffer(0) } };
  const extensionManager = { getDataSources: () => [dataSource], getActiveDataSource: () => [dataSource] };
  const handlers = srExtension.getSopClassHandlerModule({ servicesManager: { services }, extensionManager });
  const handler = handlers.find((h) => h.sopClassUids.includes(sr.SOPClassUID));

  const out = { sopClassHandler: handler && handler.name, displaySet: null, annotations: [], error: null };
  try {
    const [displaySet] = handler.getDisplaySetsFromSeries([sr]);
    await displaySet.load();
    out.displaySet = {
      isImagingMeasurementReport: displaySet.isImagingMeasurementReport,
      referencedImages: displaySet.referencedImages,
      measurements: displaySet.measurements.map((m) => ({
        TrackingIdentifier: m.TrackingIdentifier, TrackingUniqueIdentifier: m.TrackingUniqueIdentifier,
        loaded: m.loaded, labels: m.labels, graphicType: m.graphicType, coords: m.coords,
        ReferencedSOPInstanceUID: m.ReferencedSOPInstanceUID, imageId: m.imageId,
      })),
    };
  } catch (error) {
    out.error = `${error.message}\n${error.stack}`;
  }
  out.annotations = tools.annotation.state.getAllAnnotations().map((a) => ({
    annotationUID: a.annotationUID, metadata: a.metadata,
    data: { label: a.data.label, labels: a.data.labels, renderableData: a.data.renderableData },
  }));
  process.stdout.write(JSON.stringify(out, (k, v) => (v instanceof Float32Array || v instanceof Float64Array ? Array.from(v) : v)));
}

main().catch((error) => {
  process.stdout.write(JSON.stringify({ error: `${error.message}\n${error.stack}` }));
  process.exitCode = 1;
});
