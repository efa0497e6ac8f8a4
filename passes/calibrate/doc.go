// Package calibrate sets activation clips from statistics of the fp32
// model's activations.
//
// A Collector keeps, per tensor, a fixed-size histogram of |x| for the
// positive and the negative values, whose range doubles (merging bin pairs
// exactly) when a larger value arrives, so memory stays flat however many
// batches are observed. Clips turns the histograms into one clip per
// tensor by one of three methods:
//
//   - minmax: the largest value the grid must reach (max x for relu;
//     max(max x, 127/128·max −x) for signed kinds, whose grid reaches
//     −c·128/127);
//   - percentile: the given percentile of |x| (99.99 by default);
//   - mse: the clip minimising the expected squared error of fake
//     quantization, rounding and clipping both counted, on the kind's own
//     grid (signed with 2^(b−1)−1 positive steps, or unsigned with 2^b−1).
//
// Apply writes the clips into the quantizers' clip initializers. The pass
// runs nothing: a driver runs the fp32 model (with the quantized tensors as
// extra outputs) and feeds Observe.
package calibrate
