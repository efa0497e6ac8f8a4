// Command mocorpus builds the real-data benchmark's parallel corpus from
// gettext catalogs: every ROOT/**/LANG/LC_MESSAGES/*.mo is read, its
// messages cleaned, de-duplicated and split into
// DIR/{train,valid,test}.{en,LANG}.
//
//	go run ./testmodels/realdata/mocorpus -lang fr -o DIR ROOT
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/qatc/qatc/testmodels/realdata"
)

func main() {
	out := flag.String("o", "", "output directory")
	lang := flag.String("lang", "fr", "target language of the catalogs (their LANG/LC_MESSAGES directory)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: mocorpus -lang LANG -o DIR ROOT")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	cats, err := realdata.FindCatalogs(flag.Arg(0), *lang)
	if err == nil && len(cats) == 0 {
		err = fmt.Errorf("no %s/LC_MESSAGES/*.mo under %s", *lang, flag.Arg(0))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mocorpus:", err)
		os.Exit(1)
	}
	st, err := realdata.Build(cats, *lang, *out, realdata.DefaultFilter, realdata.DefaultSizes)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mocorpus:", err)
		os.Exit(1)
	}
	fmt.Printf("%d catalogs, %d messages, %d clean pairs, %d unique sources: train %d, valid %d, test %d\n",
		st.Catalogs, st.Messages, st.Cleaned, st.Unique, st.Train, st.Valid, st.Test)
}
