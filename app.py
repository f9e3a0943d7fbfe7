"""skinnet review app (Gradio). The UI lands with the app issue; this entry point already runs."""
import sys

if __name__ == "__main__":
    print("skinnet: the review app is not built yet; the library is importable: import skinnet")
    sys.exit(0)
