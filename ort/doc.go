// Package ort runs ONNX models with onnxruntime, through the
// github.com/yalue/onnxruntime_go binding. It knows nothing about
// training or quantization.
//
// Init finds and loads the shared library (QATC_ORT_LIB, then the location
// scripts/install-onnxruntime.sh installs to, then the system library
// paths). A Session runs a model file (OpenFile) or an in-memory
// graph.Model (Open) with named inputs and outputs; every call may use new
// batch and sequence sizes. Inputs are Tensors over Go slices, handed to
// onnxruntime without copying; outputs are copied into new Go slices.
// A session's inputs and outputs are graph.IOInfo, as the model declares
// them; OpenFile reads them from the file's structure (graph.CheckFile),
// which also checks the file and its external data before onnxruntime
// reads them.
// Options.Outputs exposes intermediate values as extra outputs, as
// calibration needs, without copying the model's weights.
//
// Inputs are checked against the model before onnxruntime sees them, so a
// missing input or a wrong element type or rank gets an error naming the
// input and both types; onnxruntime's own errors are returned with the
// model's path. ReadNpy and WriteNpy move Tensors in and out of NumPy
// .npy files.
package ort
